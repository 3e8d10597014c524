#!/usr/bin/env bash
# Run the Coqui TTS backend's tests (tests/engine/test_coqui_tts.py) in their own venv,
# .venv-coqui: coqui-tts needs a torch/torchaudio pair that the main .venv does not carry.
#
# The recipe (CPU, Python 3.11, about 1.8 GB and a minute to install):
#   - torch 2.13.0, the CPU wheel on this machine's disk (an unpinned torch pulls a CUDA build);
#   - torchaudio 2.11.0 without its compiled extension: PyPI only has CUDA builds, whose .so
#     files fail to load beside a CPU torch. Without them torchaudio runs as plain Python on
#     torch (resampling, mel spectrograms), which is all VITS and XTTS inference use of it;
#   - torchcodec, present only because coqui-tts refuses to import without it on torch >= 2.9
#     (it is not loaded for synthesis; here its .so files would not load either);
#   - coqui-tts 0.28.0 through the project's tts-coqui extra, and six, which it imports but
#     does not declare.
# The stub-free alternative, PyPI's matching torch==2.11.0 + torchaudio==2.11.0 (CUDA builds,
# run on the CPU), also passes these tests but makes a 5.5 GB venv.
#
# Idempotent: the venv is rebuilt from scratch only when the recipe changed (or a previous build
# did not finish), the project reinstalled in it only when pyproject.toml changed; otherwise the
# tests just run. Each step is bounded.
# Extra arguments go to pytest.
set -euo pipefail

cd "$(dirname "$0")/.."
VENV=${COQUI_VENV:-.venv-coqui}
PY=$VENV/bin/python
INSTALL_TIMEOUT=${INSTALL_TIMEOUT:-900}
TEST_TIMEOUT=${TEST_TIMEOUT:-600}

TORCH=torch==2.13.0
TORCHAUDIO=torchaudio==2.11.0
TORCHCODEC=torchcodec==0.17.0
COQUI=coqui-tts==0.28.0
SIX=six==1.17.0
PROJECT=.[tts-coqui,test]
RECIPE="$TORCH $TORCHAUDIO (no .so) $TORCHCODEC $COQUI $SIX $PROJECT"
RECIPE_STAMP=$VENV/.coqui-recipe
PROJECT_STAMP=$VENV/.coqui-project
project=$(sha256sum pyproject.toml | cut -d' ' -f1)

install() {
  # This machine's pip configuration warns once per package about an empty local index.
  timeout "$INSTALL_TIMEOUT" "$PY" -m pip --disable-pip-version-check -q install "$@" 2>&1 |
    { grep -v 'is ignored: it is neither a file nor a directory' || true; }
}

if [[ ! -f $RECIPE_STAMP || $(cat "$RECIPE_STAMP") != "$RECIPE" ]]; then
  python=${PYTHON:-$(command -v python3.11 || command -v python3)}
  "$python" -c 'import sys; assert sys.version_info[:2] == (3, 11), "needs Python 3.11"'
  echo "test-coqui: building $VENV ($RECIPE)"
  start=$SECONDS
  rm -rf "$VENV"
  "$python" -m venv "$VENV"
  install "$TORCH"
  install --no-deps "$TORCHAUDIO" "$TORCHCODEC"
  site=$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  rm -f "$site"/torchaudio/lib/*.so
  install -e "$PROJECT" "$COQUI" "$SIX"
  "$PY" -c 'import torch; assert torch.__version__.startswith("2.13.0"), torch.__version__'
  echo "$project" >"$PROJECT_STAMP"
  echo "$RECIPE" >"$RECIPE_STAMP"
  echo "test-coqui: installed in $((SECONDS - start)) s, $(du -sh "$VENV" | cut -f1)"
elif [[ ! -f $PROJECT_STAMP || $(cat "$PROJECT_STAMP") != "$project" ]]; then
  echo "test-coqui: pyproject.toml changed, reinstalling the project in $VENV"
  install -e "$PROJECT" "$COQUI" "$SIX"
  echo "$project" >"$PROJECT_STAMP"
fi

# Fail here, not as a skip: in this venv the tests must run.
timeout 120 "$PY" -c 'import torch, torchaudio, TTS.api
print("test-coqui: torch", torch.__version__, "torchaudio", torchaudio.__version__,
      "coqui-tts", TTS.__version__)'
exec timeout "$TEST_TIMEOUT" "$PY" -m pytest tests/engine/test_coqui_tts.py -q "$@"
