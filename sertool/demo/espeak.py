"""eSpeak NG loaded through ctypes (see espeak-ng's speak_lib.h): synchronous synthesis into memory.

What the demo corpus asks of eSpeak is one ``Speech`` request per utterance (text, voice, the four prosody
parameters on eSpeak's integer scales, the seed of its random generator); ``Espeak`` answers it with int16
samples at ``ESPEAK_SAMPLE_RATE``. The voices the corpus uses (``VOICE_VARIANTS``) and the ranges of
eSpeak's parameters live here too. ``Espeak`` is only ever created in the synthesis worker
(``sertool.demo.worker``): that process imports this module, so it imports neither torch nor
``sertool.data``.
"""
from __future__ import annotations

import ctypes
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import numpy as np

from sertool.core.errors import missing_package

ESPEAK_SAMPLE_RATE = 22_050  # Hz, eSpeak NG's native output rate

# eSpeak NG voice variants (espeak-ng-data/voices/!v/<name>) of each gender, chosen for sounding like speech.
VOICE_VARIANTS: dict[str, tuple[str, ...]] = {
    "Male": ("m1", "m2", "m3", "m4", "m5", "m6", "m7", "robert", "paul", "michel", "m8", "quincy"),
    "Female": ("f1", "f2", "f3", "f4", "f5", "belinda", "linda", "steph", "Andrea", "Alicia", "aunty", "Annie"),
}
LANGUAGE = "en"

# eSpeak's parameter scales: rate in words per minute (80..450), volume 0..200 (100 normal; above ~130 its
# output starts to saturate), pitch and pitch range 0..99 (50 = the voice's own; pitch 0/99 halve/double F0).
RATE_WPM_LIMITS = (80.0, 450.0)
VOLUME_LIMITS = (10.0, 200.0)
PITCH_LIMITS = (0.0, 99.0)

_AUDIO_OUTPUT_SYNCHRONOUS = 2  # espeak_AUDIO_OUTPUT: synthesise into the callback, return when done
_INITIALIZE_DONT_EXIT = 0x8000  # report a missing espeak-ng-data instead of exiting the process
_POS_CHARACTER = 1  # espeak_POSITION_TYPE
_CHARS_UTF8 = 1  # espeak_Synth flags
_EE_OK = 0  # espeak_ERROR
# espeak_PARAMETER
_ESPEAK_RATE, _ESPEAK_VOLUME, _ESPEAK_PITCH, _ESPEAK_RANGE = 1, 2, 3, 4
# int SynthCallback(short *wav, int numsamples, espeak_EVENT *events); events are not read here.
_SYNTH_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)


@dataclass(frozen=True)
class Speech:
    """One eSpeak request: text, voice, the four prosody parameters on eSpeak's integer scales, and the seed
    of eSpeak's random generator (breathy voices mix in noise)."""

    text: str
    voice: str
    rate_wpm: int
    volume: int
    pitch: int
    pitch_range: int
    seed: int


def require_espeak() -> ModuleType:
    """Import ``espeakng_loader`` or tell the user how to install it."""
    try:
        import espeakng_loader
    except ImportError:
        raise missing_package("espeakng-loader", needed_for="the demo corpus (eSpeak NG speech)") from None
    return espeakng_loader


class Espeak:
    """eSpeak NG loaded into this process: synchronous synthesis into memory, 16-bit at 22.05 kHz."""

    def __init__(self) -> None:
        loader = require_espeak()
        lib = ctypes.CDLL(loader.get_library_path())
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_Initialize.restype = ctypes.c_int
        lib.espeak_SetSynthCallback.argtypes = [_SYNTH_CALLBACK]
        lib.espeak_SetSynthCallback.restype = None
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetVoiceByName.restype = ctypes.c_int
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.espeak_SetParameter.restype = ctypes.c_int
        lib.espeak_Synth.argtypes = [
            ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int, ctypes.c_uint, ctypes.c_uint,
            ctypes.POINTER(ctypes.c_uint), ctypes.c_void_p,
        ]
        lib.espeak_Synth.restype = ctypes.c_int
        # espeak_ng_STATUS espeak_ng_SetRandSeed(long seed), from espeak_ng.h. eSpeak seeds the generator
        # behind its breath noise from the clock at start-up; it is reseeded before every utterance.
        lib.espeak_ng_SetRandSeed.argtypes = [ctypes.c_long]
        lib.espeak_ng_SetRandSeed.restype = ctypes.c_int
        # The path argument is the folder that *contains* espeak-ng-data; buffer length 0 = 60 ms chunks.
        data_parent = str(Path(loader.get_data_path()).parent).encode()
        sample_rate = lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, data_parent, _INITIALIZE_DONT_EXIT)
        if sample_rate != ESPEAK_SAMPLE_RATE:
            raise RuntimeError(f"espeak_Initialize returned {sample_rate}, expected {ESPEAK_SAMPLE_RATE} Hz")
        self._lib = lib
        self._chunks: list[np.ndarray] = []
        # Held on self: ctypes does not keep the C callback alive, and a collected one crashes eSpeak.
        self._callback = _SYNTH_CALLBACK(self._collect)
        lib.espeak_SetSynthCallback(self._callback)

    def _collect(self, samples, num_samples: int, _events) -> int:
        if samples and num_samples > 0:
            self._chunks.append(np.ctypeslib.as_array(samples, shape=(num_samples,)).copy())
        return 0  # 0 = continue synthesis

    def synthesise(self, speech: Speech) -> np.ndarray:
        """Speak ``speech``; returns int16 samples at ``ESPEAK_SAMPLE_RATE``."""
        self._chunks.clear()
        self._check(self._lib.espeak_ng_SetRandSeed(speech.seed), "random seed")
        self._check(self._lib.espeak_SetVoiceByName(speech.voice.encode()), f"voice {speech.voice}")
        # Set after the voice: selecting a voice may reset the parameters to its defaults.
        for parameter, value in (
            (_ESPEAK_RATE, speech.rate_wpm), (_ESPEAK_VOLUME, speech.volume),
            (_ESPEAK_PITCH, speech.pitch), (_ESPEAK_RANGE, speech.pitch_range),
        ):
            self._check(self._lib.espeak_SetParameter(parameter, value, 0), f"parameter {parameter}={value}")
        text = speech.text.encode() + b"\0"
        self._check(
            self._lib.espeak_Synth(text, len(text), 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None), "synthesis"
        )
        return np.concatenate(self._chunks) if self._chunks else np.zeros(0, dtype=np.int16)

    @staticmethod
    def _check(status: int, what: str) -> None:
        if status != _EE_OK:
            raise RuntimeError(f"eSpeak NG failed ({what}): status {status}")
