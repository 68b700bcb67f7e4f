#!/usr/bin/env bash
# The prepared GPU check (issue 14; scripts/gpu_check.py says what it measures):
#
#   bash scripts/gpu_check.sh            # one H200, no internet: PyTorch/transformers/accelerate/peft installed there
#   bash scripts/gpu_check.sh --cpu      # the same flow on model=tiny, on a CPU (tests/test_gpu_check.py)
#
# What the GPU machine lacks travels as wheels in .whl/ (made here by `bash scripts/gpu_wheels.sh`, named in the
# device tool's `carry`; PREFOPT_GPU_WHEELS names another folder), with SmolLM2's tokenizer in .whl/tokenizer and
# the real UltraFeedback rows in .whl/data/ultrafeedback (the data folder is not in the repository). The
# checkout comes first on PYTHONPATH, the wheels after it. Figures land in $OUT (or gpu_check_out/).
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
EXTRA=()
WHEELS="${PREFOPT_GPU_WHEELS:-.whl}"
if [ -d "$WHEELS" ] && ls "$WHEELS"/*.whl > /dev/null 2>&1; then
  SITE="$(mktemp -d)"
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" "$WHEELS"/*.whl
  export PYTHONPATH="$PWD:$SITE${PYTHONPATH:+:$PYTHONPATH}"
  [ -d "$WHEELS/tokenizer" ] && EXTRA+=(--tokenizer "$WHEELS/tokenizer")
  [ -d "$WHEELS/data" ] && export PREFOPT_SHARED_DATA="$(cd "$WHEELS/data" && pwd)"
else
  export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
# 8 minutes at most on the GPU (the check itself is sized for about 5).
exec timeout 480 python3 scripts/gpu_check.py "${EXTRA[@]}" "$@"
