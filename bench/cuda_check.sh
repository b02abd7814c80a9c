#!/bin/bash
# The CUDA check, in one command on a machine with an NVIDIA GPU and nvcc:
#   bash bench/cuda_check.sh            (OUT=<folder> keeps the logs and tables; default results/cuda)
# Builds the core with the CUDA kernels into the active Python, then runs
#   tests/test_cuda.py (every CUDA op against the CPU core, bit for bit where the CPU
#   repeats the same chains) and bench/test_bench_cuda.py (all convs of resnet152 and
#   densenet201: the GPU against the CPU core, a PyTorch loop and cuBLAS; prune() on the GPU
#   keeps the CPU's channels).
# Without network access, put the wheels of scipy-openblas32, pybind11 and scikit-build-core
# in .whl/ first (python3 -m pip download ... -d .whl).
# Environment: ARCH (CUDA architectures, default 90), TEST_T / BENCH_T (time limits, s),
# BENCH_K (pytest -k of the bench, default all).
set -o pipefail
cd "$(dirname "$0")/.." || exit 1
R=$PWD
OUT=${OUT:-results/cuda}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
nproc; nvidia-smi -L; nvcc --version | tail -1
python3 -c "import torch, sys; print(sys.version.split()[0], torch.__version__, torch.version.cuda)"
grep -m1 "model name" /proc/cpuinfo
if compgen -G ".whl/*.whl" > /dev/null; then python3 -m pip install -q --no-index --no-deps .whl/*.whl; fi
t0=$(date +%s)
CMAKE_BUILD_PARALLEL_LEVEL=$(nproc) python3 -m pip install --no-build-isolation --no-deps \
  -Ccmake.define.PYPRUNE_WITH_CUDA=ON -Ccmake.define.CMAKE_CUDA_ARCHITECTURES="${ARCH:-90}" . > "$OUT/build.log" 2>&1 \
  || { tail -40 "$OUT/build.log"; exit 1; }
echo "build: $(( $(date +%s) - t0 )) s"
# `python3 -m pytest` from here imports ./pyprune: the built core goes beside it (as make setup does)
(cd / && python3 -c "import pyprune._core as c, shutil; print('cuda kernels', c.cuda_available, 'devices', c.cuda_device_count()); shutil.copy2(c.__file__, '$R/pyprune/')")
timeout "${TEST_T:-300}" python3 -m pytest -q -p no:cacheprovider tests/test_cuda.py tests/test_errors.py -k "cuda or device" 2>&1 \
  | tail -30 | tee "$OUT/tests.log"
PYPRUNE_BENCH_OUT=$OUT timeout "${BENCH_T:-600}" python3 -m pytest -q -p no:cacheprovider bench/test_bench_cuda.py -s \
  ${BENCH_K:+-k "$BENCH_K"} 2>&1 | tail -40 | tee "$OUT/bench.log"
