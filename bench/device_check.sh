#!/usr/bin/env bash
# The GPU check on a lent device machine, in one call. Its image has torch, transformers, peft, accelerate, psutil,
# nvidia-ml-py; the rest travels as wheels in .whl/ with the alpaca demo data (bench/gpu_wheels.sh fills it here).
#   device call: command "bash bench/device_check.sh [gpu_check.py options]", carry [".whl"], timeout_s 600
# Prints what the machine has, what the carried wheels still miss there, then bench/gpu_check.py's figures; its
# files land in $OUT (gpu_check.md, gpu_check.json, gpu_check.log, gpu_check_logs.tar.gz, the dashboard's screens).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-bench/gpu_check_out}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  || exit 1
# nothing outside the machine can be reached: the hub must not be tried (each try waits for a timeout)
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 OVERNIGHT_REALDATA=$PWD/.whl HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 - <<'EOF'
import importlib, importlib.metadata as md
from packaging.requirements import Requirement

def version(name):
    try:
        return md.version(name)
    except md.PackageNotFoundError:
        return "MISSING"


have = ", ".join(f"{n} {version(n)}" for n in ("torch", "transformers", "peft", "accelerate", "trl", "datasets",
                                                "bitsandbytes", "liger-kernel", "pyarrow", "fsspec"))
flash = importlib.util.find_spec("flash_attn") is not None
print(f"python packages: {have}; flash_attn {'installed' if flash else 'not installed'}")
unmet = []
for dist in md.distributions(path=["/tmp/site"]):
    for text in dist.requires or []:
        req = Requirement(text)
        if req.marker and not req.marker.evaluate({"extra": ""}):
            continue
        try:
            version = md.version(req.name)
        except md.PackageNotFoundError:
            unmet.append(f"{dist.metadata['Name']} needs {req}: missing")
            continue
        if req.specifier and not req.specifier.contains(version, prereleases=True):
            unmet.append(f"{dist.metadata['Name']} needs {req}: {version} there")
print("carried wheels: " + ("; ".join(unmet) if unmet else "every requirement met"))
EOF
python3 bench/gpu_check.py --out "$OUT" "$@" 2>&1 | tee "$OUT/gpu_check.log"
