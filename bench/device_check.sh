#!/usr/bin/env bash
# The prepared device check (docs/gpu.md), from the repository root or anywhere:
#
#     bash bench/device_check.sh            # on a GPU machine: at most 8 minutes, figures under $OUT
#     bash bench/device_check.sh --tiny     # the same steps at a tiny size on the CPU (CI)
#
# It runs bench/device_check.py with the first Python that has the project's dependencies: $PYTHON when
# set, else .venv's (what `make venv` makes), else python3. Where none has them it tries `make venv` once (it needs a
# package index, which a device machine may not reach) and otherwise says what is missing (exit 3).
set -uo pipefail
cd "$(dirname "$0")/.."
NEEDED="torch timm optuna ray numpy yaml pandas matplotlib psutil"

missing() {  # the modules of $NEEDED that Python $1 cannot import (none: exit 0)
    "$1" - $NEEDED <<'PY'
import importlib.util, sys
gone = [name for name in sys.argv[1:] if importlib.util.find_spec(name) is None]
print(" ".join(gone))
sys.exit(1 if gone else 0)
PY
}

pick=""
for py in ${PYTHON:-} .venv/bin/python python3; do
    command -v "$py" >/dev/null 2>&1 || continue
    if lacks=$(missing "$py"); then pick=$py; break; fi
    echo "device check: $py lacks: $lacks"
done
if [ -z "$pick" ]; then
    echo "device check: trying 'make venv' (needs a package index)"
    if timeout 120 make venv && lacks=$(missing .venv/bin/python); then pick=.venv/bin/python; fi
fi
if [ -z "$pick" ]; then
    echo "device check: no Python here has $NEEDED; install the project ('make venv' or pip install -e .) and rerun" >&2
    exit 3
fi
echo "device check: $pick ($("$pick" -c 'import torch; print("torch", torch.__version__, "CUDA", torch.cuda.is_available())'))"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
# jemalloc for the CPU work of the trials (as `make search` preloads it), where installed.
allocator=$("$pick" proxy/allocator.py)
if [ -n "$allocator" ]; then export $allocator; fi
exec "$pick" -m bench.device_check "$@"
