#!/usr/bin/env bash
# The GPU check on a lent device machine (its image has torch, transformers, peft, psutil, nvidia-ml-py; the rest
# travels as wheels in .whl/, with the alpaca demo data). Usage there: bash bench/device_check.sh [gpu_check args]
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-bench/gpu_check_out}
mkdir -p "$OUT" ../shared/realdata
cp .whl/alpaca_en_demo.json ../shared/realdata/
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, transformers, peft; print('torch', torch.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__)"
python3 bench/gpu_check.py --out "$OUT" "$@" 2>&1 | tee "$OUT/gpu_check.log"
