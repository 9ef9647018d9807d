#!/usr/bin/env bash
# Here, before a device call: the wheels the lent GPU machine's image lacks (bench/gpu_wheels.py lists them:
# overnight's dependencies, its [gpu] extra and TRL's, minus the image's packages), with the alpaca demo data, into
# .whl/ (ignored through .git/info/exclude; the device call carries it: carry = [".whl"]). Python 3.12 wheels: the
# device's python3 is 3.12.3 (the device tool's KINDS.md). Prints the total, which must leave the travelling tree
# (everything git does not ignore + .whl) under 64 MiB.
#     bash bench/gpu_wheels.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
DATA=${OVERNIGHT_REALDATA:-../shared/realdata}/alpaca_en_demo.json
exclude=$(git rev-parse --git-path info/exclude)
mkdir -p .whl "$(dirname "$exclude")"
grep -qxF /.whl/ "$exclude" 2>/dev/null || echo /.whl/ >>"$exclude"
cp "$DATA" .whl/
platforms=()
for n in 39 35 34 31 28 27 24 17; do platforms+=(--platform "manylinux_2_${n}_x86_64"); done
platforms+=(--platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform linux_x86_64)
for spec in $("$PY" bench/gpu_wheels.py); do
  name=${spec%%==*}
  # one version of each: a second one stops the whole install there
  ls .whl/ | grep -qi "^${name//-/[-_]}-[0-9]" && continue
  # a package published only as a source archive (rouge-score) is pure Python: built into a wheel here
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --abi cp312 --abi abi3 --abi none "${platforms[@]}" -d .whl "$spec" 2> >(grep -v "is ignored" >&2) \
    || "$PY" -m pip wheel -q --no-deps -w .whl "$spec" 2> >(grep -v "is ignored" >&2)
done
ls -1 .whl | sed 's/^/  /'
echo "total: $(du -cb .whl/* | tail -1 | cut -f1 | awk '{printf "%.1f MiB", $1 / 1048576}') in .whl/;" \
  "the tree git does not ignore: $(git ls-files -co --exclude-standard -z | du -cb --files0-from=- | tail -1 \
  | cut -f1 | awk '{printf "%.1f MiB", $1 / 1048576}')"
