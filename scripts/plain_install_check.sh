#!/usr/bin/env bash
# The README's plain-pip path on a CPU machine, exactly as a new user takes it (CI runs it after the tests):
# a fresh venv, `pip install torch==2.13.0`, then `pip install '.[plot,demo,opensmile]'` from this checkout (not
# editable, no scripts/install.sh), then the first commands a user runs, from a folder outside the checkout:
# `sertool data demo`, `train`, `predict`. Everything lives in a temporary folder, removed at the end; nothing in
# the checkout is written (pip builds the package in its own temporary folder).
#
# Why a script and not a pytest test: it needs PyPI (as `make install` does) and a few minutes, and it checks the
# install itself, which a test run inside the project's own venv cannot.
set -euo pipefail

CHECKOUT=$(cd "$(dirname "$0")/.." && pwd)
PYTHON=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
# The README's plain-pip line (tests/test_docs.py checks that the README still says this).
EXTRAS="[plot,demo,opensmile]"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$PYTHON" -m venv "$work/venv"
pip=("$work/venv/bin/python" -m pip --disable-pip-version-check -q)
"${pip[@]}" install "$TORCH_SPEC"
"${pip[@]}" install "$CHECKOUT$EXTRAS"
"$work/venv/bin/python" -m pip check

mkdir "$work/user"
cd "$work/user"
export PATH="$work/venv/bin:$PATH"
# The installed package, not the checkout (which is not on the path here).
installed=$(python -c "import sertool, os; print(os.path.dirname(sertool.__file__))")
case "$installed" in
    "$work/venv/"*) ;;
    *) echo "plain install check: sertool imported from $installed, not from the fresh venv" >&2; exit 1 ;;
esac
if python -c "import torchaudio" 2>/dev/null; then
    echo "plain install check: note: torchaudio imports here; sertool does not need it"
fi

sertool data demo corpus --size tiny --quiet
sertool train --backbone fbank --corpus corpus --max-steps 4 --out run --quiet
sertool predict run --corpus corpus --split Test3 --out predictions.csv --submission submission.csv
sertool predict run corpus/Audios --out clips.csv
python - <<'EOF'
import csv

rows = list(csv.DictReader(open("submission.csv")))
clips = list(csv.DictReader(open("clips.csv")))
assert rows and clips, "no predictions written"
for row in rows:
    for column in ("EmoAct", "EmoVal", "EmoDom"):
        assert 1.0 <= float(row[column]) <= 7.0, (row, column)
print(f"plain install check: ok ({len(rows)} Test3 predictions, {len(clips)} clips predicted from a folder)")
EOF
