#!/bin/bash
# There, on the GPU machine, in the last call (it carries the last part, .gpu/models and .gpu/whl): ONNX
# Runtime's GPU build from the parts under /tmp/parts (see pack.sh), the small wheels, then the GPU tests and
# bench_gpu.py. Results under $OUT. BUDGET: the search's time budget per model (s); BENCH_S: the whole run's;
# SKIP_TESTS=1: no pytest; MODELS: the order to measure them in (space-separated names); RUNS: interleaved runs per deployment;
# BENCH_ARGS: more of run's options (--chosen-first).
set -u
cp .gpu/p[0-9]* /tmp/parts/ 2>/dev/null
mkdir -p /tmp/site
cat $(ls /tmp/parts/p* | sort -V) | xz -d | tar -x -C /tmp/site || { echo "assembling ORT failed"; ls -la /tmp/parts; exit 3; }
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .gpu/whl/*.whl || exit 4
export PYTHONPATH=/tmp/site:$PWD/src PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
python3 -c "import onnxruntime as o; print(o.__version__, o.get_available_providers())"
[ -n "${SKIP_TESTS:-}" ] || (timeout 150 python3 -m pytest -q -p no:cacheprovider tests/optimize/test_gpu.py -rs 2>&1 | tail -15) | tee $OUT/pytest.log
timeout ${BENCH_S:-330} python3 benchmarks/bench_gpu.py run .gpu/models ${MODELS:-} --json $OUT/gpu-run.json \
  --time-budget ${BUDGET:-15} --runs ${RUNS:-200} ${BENCH_ARGS:-} 2>&1 | grep -v '^    \|onnxruntime_src\|^.\[m$' | tee $OUT/bench.log | cut -c1-300
