#!/bin/bash
# usage: benchmarks/probes/build_ab.sh SNAPSHOT ROUNDS
#   `envrunner build --force` with the envrunner of SNAPSHOT (a folder holding `git archive REV
#   envrunner`) and with this checkout's, alternately, ROUNDS times each, and the same uv commands
#   by hand between them; prints the median and range of each. Warm caches: the first builds fill
#   a uv cache of its own. Run from the repository root.
set -euo pipefail
SNAPSHOT=$(readlink -f "$1"); ROUNDS=$2
ROOT=$(pwd); PY=${PYTHON:-python}; UV=$($PY -c 'import shutil, sys, os; print(shutil.which("uv") or os.path.join(os.path.dirname(sys.executable), "uv"))')
WORK=$(mktemp -d); trap 'rm -rf "$WORK"' EXIT
MINOR=$($PY -c 'import sys; print("%d.%d" % sys.version_info[:2])')
BASE=$($PY -c 'import sys; print(sys.base_prefix)')/bin/python$MINOR
printf 'version: 1\nenvironments:\n  b:\n    python: "%s"\n    requirements: [six==1.16.0]\n    installer: uv\n' "$MINOR" > "$WORK/environments.yaml"
export UV_CACHE_DIR=$WORK/uv-cache UV_NO_PROGRESS=1
$PY -m compileall -q "$SNAPSHOT/envrunner" "$ROOT/envrunner" > /dev/null
cd "$WORK"
PYTHONPATH=$SNAPSHOT ENVRUNNER_HOME=$WORK/home-before $PY -m envrunner build -q > /dev/null
ENVRUNNER_HOME=$WORK/home-after PYTHONPATH=$ROOT $PY -m envrunner build -q > /dev/null
stamp() { date +%s.%N; }
for _ in $(seq "$ROUNDS"); do
  s=$(stamp); PYTHONPATH=$SNAPSHOT ENVRUNNER_HOME=$WORK/home-before $PY -m envrunner build -q --force > /dev/null; echo "before $(echo "$(stamp) - $s" | bc)"
  s=$(stamp); PYTHONPATH=$ROOT ENVRUNNER_HOME=$WORK/home-after $PY -m envrunner build -q --force > /dev/null; echo "after $(echo "$(stamp) - $s" | bc)"
  rm -rf hand; s=$(stamp)
  "$UV" venv --python "$BASE" --no-project --no-config --quiet hand
  "$UV" pip install --python hand/bin/python --compile-bytecode --no-config -q six==1.16.0 'pyzmq>=25' 'msgpack>=1.0' 'cloudpickle>=3.0'
  echo "hand $(echo "$(stamp) - $s" | bc)"
done | sort -k1,1 -k2,2n | awk '{v[$1]=v[$1]" "$2; n[$1]++} END {for (k in v) {split(substr(v[k],2), a, " "); printf "%s median %.3f s (%.3f-%.3f, n=%d)\n", k, a[int((n[k]+1)/2)], a[1], a[n[k]], n[k]}}'
