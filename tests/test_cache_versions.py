"""A cached value's code cannot change without its version: otherwise vectors an older sertool cached are read as
the new code's, and a run differs from a fresh one with exit 0 (the log-mel statistics were batched once without a
new STATISTICS_VERSION, and runs that read an older cache differed from fresh ones in the last digits).

Each versioned cache pins the digest of the code that computes what it stores: the syntax trees of those
functions and classes, without docstrings, so that comments, docstrings and formatting change nothing. When the
code changes, this test fails until the version is raised and the new digest recorded beside it.
"""
from __future__ import annotations

import ast
import hashlib
import inspect
import textwrap
from collections.abc import Callable

import pytest

from sertool.data import audio as audio_reading
from sertool.data import dataset, dsp
from sertool.models import opensmile_features, utterance_stats
from sertool.models.backbones import fbank


def code_digest(parts: list[Callable | type]) -> str:
    """The SHA-256 of the syntax trees of ``parts`` (functions or classes), docstrings left out."""
    digest = hashlib.sha256()
    for part in parts:
        digest.update(f"{part.__module__}.{part.__qualname__}\n{tree_text(inspect.getsource(part))}\n".encode())
    return digest.hexdigest()


def tree_text(source: str) -> str:
    """The syntax tree of ``source`` as text, without docstrings (comments and layout are not in a tree)."""
    tree = ast.parse(textwrap.dedent(source))
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if (isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and body
                and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant)
                and isinstance(body[0].value.value, str)):
            node.body = body[1:] or [ast.Pass()]
    return ast.dump(tree)


# What each version's vectors come from: the reading of the audio, its resampling, and the computation itself.
_READING = [dataset.load_utterance_audio, audio_reading.load_audio, dsp.resample, dsp._build_sinc_kernels]
VERSIONED = {
    "utterance_stats.STATISTICS_VERSION": (
        lambda: utterance_stats.STATISTICS_VERSION,
        [*_READING, dsp.mel_filter_bank, dsp._hz_to_mel, fbank.mel_filter_bank, fbank.raw_log_mel,
         utterance_stats.log_mel_statistics, utterance_stats._energy_statistics, utterance_stats.StatisticsExtractor,
         utterance_stats.feature_names]),
    "opensmile_features.OPENSMILE_FEATURES_VERSION": (
        lambda: opensmile_features.OPENSMILE_FEATURES_VERSION,
        [*_READING, opensmile_features.OpenSmileExtractor]),
}
# version → digest of its code (code_digest). Raise the version and add its digest when the test says so.
PINNED = {
    "utterance_stats.STATISTICS_VERSION": {2: "cd9aeb24028918b757df1a14d79316c3605575abf08b6ef4bb6acbd904abc951"},
    "opensmile_features.OPENSMILE_FEATURES_VERSION": {1: "42bb1b9267d609cb5727f535806043fdb7a153a758cd14ebe2373572fa7716bd"},
}


@pytest.mark.parametrize("name", sorted(VERSIONED))
def test_a_cached_values_code_changes_only_with_its_version(name):
    version_of, parts = VERSIONED[name]
    version, digest = version_of(), code_digest(parts)
    assert PINNED[name].get(version) == digest, (
        f"the code behind {name} = {version} is not the code that version was pinned to: raise {name} (caches of "
        f"the old code must not be read as the new) and pin {{{version + 1}: {digest!r}}} in PINNED; if the change "
        "cannot alter a cached value, pin this digest for the current version instead")


def test_the_digest_ignores_docstrings_comments_and_layout_but_not_code():
    plain = "def f(x):\n    return x + 1\n"
    described = 'def f(x):\n    """What f does."""\n    return (x +\n            1)  # one more\n'
    assert tree_text(plain) == tree_text(described) != tree_text(plain.replace("1", "2"))
    assert code_digest([utterance_stats.log_mel_statistics]) != code_digest([utterance_stats._energy_statistics])
