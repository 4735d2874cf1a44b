"""No module under sertool/ writes a file, removes one, or opens one a user named, except through the guards.

Every call that touches the file system is found in the source (``ast``; nothing is imported) and must sit
in ``sertool/guards/`` or be one of the exceptions below, each with the reason it is not a user's file. A
new raw ``open()``, ``write_text`` or ``sf.write`` anywhere else fails this test, as a new import across a
layer fails tests/test_layering.py.
"""
from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "sertool"
GUARDS = PACKAGE / "guards"

# Calls that write, remove, or read files, by the name they are called with (``open``, ``os.replace``,
# ``path.write_text`` → ``.write_text``: any object's method of that name).
FILE_CALLS = {
    "open", "os.open", "os.fdopen", ".open",  # builtins and os: any mode
    ".write_text", ".write_bytes", ".read_text", ".read_bytes",
    "os.replace", "os.rename", "os.link", "os.symlink", "os.remove", "os.unlink", ".unlink", ".rmdir",
    "os.rmdir", ".mkdir", "os.makedirs", "os.mkfifo", ".touch", ".rename",
    "shutil.copy", "shutil.copyfile", "shutil.copytree", "shutil.move", "shutil.rmtree",
    "tempfile.mkstemp", "tempfile.mkdtemp", "tempfile.TemporaryDirectory", "tempfile.NamedTemporaryFile",
    "torch.save", "torch.load", "np.save", "np.savez", "np.load", "numpy.load",
    "sf.write", "sf.read", "sf.info", "sf.SoundFile", "soundfile.write", "soundfile.read",
    ".savefig", ".print_png", "save_file", "load_file", "safe_open",
}
# Where a file call outside sertool/guards/ is right, and why: ``{module: {call: reason}}``.
ALLOWED = {
    "data/audio.py": {
        "sf.read": "the audio reader: libsndfile reads a file's header, then only the window asked for",
        "sf.SoundFile": "the audio reader (see sf.read)",
        "sf.write": "encode_wav writes into a BytesIO; the bytes are committed by OutputPlan.write_data",
    },
    "store/checkpoints.py": {
        "torch.load": "weights_only=True, after check_user_file (sertool.guards.reads)",
        "torch.save": "into a BytesIO; the bytes are committed by atomic_write",
    },
    "store/model_folder.py": {"safe_open": "tensors only, after check_user_file (sertool.guards.reads)"},
    "store/onnx_export.py": {"tempfile.TemporaryDirectory": "the exporter's scratch folder: torch.onnx.export writes "
                             "the graph to a path; it is read back, checked, and committed by OutputPlan"},
    "cache/items.py": {"open": "reads a cache file sertool wrote itself, in its own cache folder"},
    "cache/frames.py": {"np.load": "memory-maps a cache file sertool wrote (allow_pickle is off)",
                        "open": "reads the index of a cache sertool wrote"},
    "cache/scan.py": {"np.load": "a corpus-scan cache sertool wrote (allow_pickle=False)",
                      "np.savez": "into a BytesIO; the bytes are committed by write_cache_file"},
    "data/snapshot.py": {"np.load": "a corpus snapshot sertool wrote (allow_pickle=False)",
                         "np.savez": "into a BytesIO; the bytes are committed by write_cache_file"},
    "inference/plots.py": {".savefig": "into the handle OutputPlan.writing opened"},
    "experiments/speakers.py": {".savefig": "into the handle OutputPlan.writing opened"},
    "training/curves.py": {".print_png": "into the handle OutputPlan.writing or atomic_write opened"},
    "cache/vectors.py": {"load_file": "a safetensors cache file sertool wrote"},
    "cache/transcripts.py": {"open": "reads an ASR-transcript cache file sertool wrote"},
    "demo/worker.py": {
        "tempfile.TemporaryDirectory": "the eSpeak worker's scratch folder, removed when the corpus is written",
        ".write_text": "the worker's request list, in that scratch folder",
        ".open": "the worker's log, in that scratch folder",
        ".read_text": "the worker's log or requests, in that scratch folder",
        "os.fdopen": "the worker's audio channel (a duplicated stdout), not a file",
    },
    "api.py": {
        "tempfile.TemporaryDirectory": "a waveform given to Model.predict becomes a WAV file in a private temp folder",
        "soundfile.write": "that WAV file (32-bit float, lossless)",
    },
    "training/memory_plan.py": {
        ".read_text": "/proc/self/statm and /proc/meminfo: this process's and the machine's memory, no user's file",
    },
    "training/run_folder.py": {
        "open": "the run folder's lock file (flock), created beside the run's files",
        ".mkdir": "the run folder itself, checked by OutputPlan.folder first",
    },
}


def _name(call: ast.Call) -> str:
    """``os.replace``, ``open``, or ``.write_text`` for a method of any other object."""
    function = call.func
    if isinstance(function, ast.Name):
        return function.id
    if isinstance(function, ast.Attribute):
        if isinstance(function.value, ast.Name) and function.value.id in ("os", "shutil", "tempfile", "torch", "np",
                                                                           "numpy", "sf", "soundfile"):
            return f"{function.value.id}.{function.attr}"
        return f".{function.attr}"
    return ""


def file_calls() -> dict[str, set[str]]:
    """Every module's file calls outside sertool/guards/: ``{path relative to sertool/: {call, ...}}``."""
    found: dict[str, set[str]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        if GUARDS in path.parents:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call) and _name(node) in FILE_CALLS:
                found.setdefault(str(path.relative_to(PACKAGE)), set()).add(_name(node))
    return found


def test_every_file_write_and_user_file_read_goes_through_the_guards():
    found = file_calls()
    unguarded = {module: sorted(calls - set(ALLOWED.get(module, {}))) for module, calls in found.items()}
    unguarded = {module: calls for module, calls in unguarded.items() if calls}
    assert not unguarded, ("file calls outside sertool/guards/ (write through OutputPlan / atomic_write, read a user's "
                           f"file through guards.reads): {unguarded}")


def test_every_exception_is_still_needed():
    found = file_calls()
    stale = {module: sorted(set(calls) - found.get(module, set())) for module, calls in ALLOWED.items()}
    assert not {module: calls for module, calls in stale.items() if calls}, stale


def test_the_scan_finds_what_it_looks_for():
    source = ("import os\nfrom pathlib import Path\nopen('x', 'w')\nPath('x').write_text('y')\nos.replace('a', 'b')\n"
              "'a'.replace('b', 'c')\n")
    names = {_name(node) for node in ast.walk(ast.parse(source)) if isinstance(node, ast.Call)}
    assert {"open", ".write_text", "os.replace"} <= names & FILE_CALLS and ".replace" not in FILE_CALLS
