"""The field's standard utterance features through openSMILE (the optional ``opensmile`` package): eGeMAPSv02
(88 functionals, Eyben et al. 2016) and ComParE_2016 (6,373 functionals), the features SER papers give their
linear baselines.

Each clip is read as sertool reads audio everywhere (``data.dataset.load_utterance_audio``: soundfile, channels
averaged, resampled to 16 kHz), and that float32 signal is what ``Smile.process_signal`` gets, never the file's
path: the features describe what sertool's models hear, whatever the file's rate, channels or format. They are
cached by audio content as the log-mel statistics are (``sertool.cache.statistics``; the setup key names the
feature set, the level, the package's version and this module's ``OPENSMILE_FEATURES_VERSION``).
"""
from __future__ import annotations

from types import ModuleType

import numpy as np
from torch import Tensor

from sertool.cache.statistics import StatisticsSetup
from sertool.core.constants import SAMPLE_RATE
from sertool.core.errors import missing_package
from sertool.data.dataset import load_utterance_audio
from sertool.data.records import Utterance

OPENSMILE_PACKAGE = "opensmile"  # the PyPI name (setup.cfg's extra of the same name); its wheel ships the binary
FEATURE_LEVEL = "Functionals"  # one vector per utterance (openSMILE's LLDs are per frame)
# sertool's names of the feature sets (core.config.FLOOR_FEATURES) → openSMILE's ``FeatureSet`` members.
OPENSMILE_FEATURE_SETS: dict[str, str] = {"egemaps": "eGeMAPSv02", "compare": "ComParE_2016"}
# openSMILE's longest analysis window is 60 ms: a shorter clip gives NaN for every functional, so it is
# zero-padded to this many samples (the zeros counting as audio, as the x-vector pads a clip too short for it).
MIN_SAMPLES = 960
OPENSMILE_FEATURES_VERSION = 1  # raise it whenever the code changes what a vector holds (tests/test_cache_versions.py)


def require_opensmile(features: str) -> ModuleType:
    """Import ``opensmile`` or tell the user how to install it (``features``: the ``--features`` value that needs it).

    Raises:
        SertoolError: the package is not installed.
    """
    try:
        import opensmile
    except ImportError:
        raise missing_package(OPENSMILE_PACKAGE, needed_for=f"--features {features}") from None
    return opensmile


class OpenSmileExtractor:
    """One waveform's functionals of ``features`` (a key of ``OPENSMILE_FEATURE_SETS``), the ``Smile`` built once.

    Picklable (``Smile`` is), so that a statistics pass's worker processes can take it.

    Raises:
        SertoolError: ``opensmile`` is not installed (naming the package to install).
    """

    def __init__(self, features: str) -> None:
        opensmile = require_opensmile(features)
        self.smile = opensmile.Smile(feature_set=opensmile.FeatureSet[OPENSMILE_FEATURE_SETS[features]],
                                     feature_level=opensmile.FeatureLevel[FEATURE_LEVEL])

    @property
    def feature_names(self) -> list[str]:
        """openSMILE's name of each entry of a vector, in order."""
        return list(self.smile.feature_names)

    def __call__(self, waveform: Tensor) -> np.ndarray:
        """The functionals (float64, as openSMILE computed them in float32) of one 16 kHz mono float32 waveform."""
        signal = waveform.numpy().astype(np.float32, copy=False)
        if len(signal) < MIN_SAMPLES:
            signal = np.pad(signal, (0, MIN_SAMPLES - len(signal)))
        return self.smile.process_signal(signal, SAMPLE_RATE).to_numpy(dtype=np.float64, copy=True)[0]


def opensmile_setup(features: str) -> StatisticsSetup[Utterance]:
    """The functionals of ``features`` as ``sertool.cache.statistics`` keys, stores and computes them.

    Raises:
        SertoolError: ``opensmile`` is not installed (naming the package to install).
    """
    opensmile = require_opensmile(features)
    feature_set = OPENSMILE_FEATURE_SETS[features]
    names = OpenSmileExtractor(features).feature_names
    identity = {"version": OPENSMILE_FEATURES_VERSION, "opensmile": opensmile.__version__,
                "feature_set": feature_set, "feature_level": FEATURE_LEVEL, "sample_rate": SAMPLE_RATE,
                "min_samples": MIN_SAMPLES}
    return StatisticsSetup(
        name=f"opensmile-{feature_set}", identity=identity, dim=len(names),
        metadata={"feature_set": feature_set, "feature_level": FEATURE_LEVEL, "opensmile": opensmile.__version__},
        read=load_utterance_audio, extractor=lambda: OpenSmileExtractor(features),
        label=f"{feature_set} functionals of {{:,}} utterances")
