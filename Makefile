# make demo   set up (build + install into the active Python) and run the embedded demo
# make test   set up and run the test suite (the checks that take minutes: make test-slow)
# make bench  set up and run the benchmarks (pytest-benchmark)
#
# pyprune installs into the Python that runs `make` (python3 by default). To keep it apart,
# activate a virtualenv first, or pass PYTHON=/path/to/venv/bin/python.
PYTHON ?= python3
STAMP  := build/.installed
SOURCES := pyproject.toml CMakeLists.txt $(shell find csrc pyprune -type f \( -name '*.cpp' -o -name '*.h' -o -name '*.py' -o -name '*.pyi' -o -name '*.cu' -o -name '*.cuh' \) 2>/dev/null)

.PHONY: setup demo test test-slow bench clean

setup: $(STAMP)

$(STAMP): $(SOURCES)
	$(PYTHON) -m pip install ".[test,bench]"
	@# the built extension also goes next to the sources, so `import pyprune` works from
	@# the repository root (where ./pyprune shadows the installed package) as well
	cd / && $(PYTHON) -c "import pyprune._core as c, shutil; shutil.copy2(c.__file__, '$(CURDIR)/pyprune/')"
	@mkdir -p build && touch $@

demo: setup
	@# (--force: each run of the demo replaces its own results/demo)
	$(PYTHON) -m pyprune demo --force

test: setup
	$(PYTHON) -m pytest

test-slow: setup
	$(PYTHON) -m pytest -m slow

bench: setup
	$(PYTHON) -m pytest bench --benchmark-columns=min,median,mean,rounds --benchmark-sort=name

clean:
	rm -rf build pyprune/_core*.so
