# make demo   set up (virtualenv + build) and run the embedded demo
# make test   set up and run the test suite
# make bench  set up and run the benchmarks (pytest-benchmark)
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.pyprune-installed
SOURCES := pyproject.toml CMakeLists.txt $(shell find csrc pyprune -type f \( -name '*.cpp' -o -name '*.h' -o -name '*.py' -o -name '*.pyi' -o -name '*.cu' -o -name '*.cuh' \) 2>/dev/null)

.PHONY: setup demo test bench clean

setup: $(STAMP)

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

$(STAMP): $(VENV)/bin/python $(SOURCES)
	$(PY) -m pip install ".[test,bench]"
	touch $@

demo: setup
	$(VENV)/bin/pyprune demo

test: setup
	$(VENV)/bin/pytest

bench: setup
	$(VENV)/bin/pytest bench --benchmark-columns=min,median,mean,rounds --benchmark-sort=name

clean:
	rm -rf build $(VENV)
