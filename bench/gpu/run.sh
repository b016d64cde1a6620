#!/usr/bin/env bash
# The one device check of issue 25, as one command on a CUDA machine without network (the `device` tool's H200):
# install the carried wheels (.whl: see bench/gpu/README.md), run the CUDA cases of the kernel equality tests, then
# the benchmark. Everything it reports goes to $OUT (or bench/results when run by hand).
set -uo pipefail
OUT=${OUT:-bench/results}
mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || exit 1
  export PYTHONPATH=/tmp/site:$PWD/runtime
else
  export PYTHONPATH=$PWD/runtime
fi
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, transformers, peft, pyarrow, datasets, trl; print('torch', torch.__version__, 'transformers',
transformers.__version__, 'peft', peft.__version__, 'pyarrow', pyarrow.__version__, 'datasets', datasets.__version__,
'trl', trl.__version__)" || exit 1
timeout 150 python3 -m pytest -q -p no:cacheprovider tests/test_packed_kernels.py tests/test_lm_head.py 2>&1 \
  | tee "$OUT/gpu-tests.log" | tail -15
timeout "${BENCH_TIMEOUT:-330}" python3 bench/gpu/gpu_bench.py --out "$OUT/gpu.json" "$@" 2>&1 | tee "$OUT/gpu-bench.log" \
  | grep -v -E "it/s\]|examples/s\]|Warning|warn\(" | tail -40
