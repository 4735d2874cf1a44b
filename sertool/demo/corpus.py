"""The built-in demo corpus: synthetic emotional speech in the exact MSP-Podcast v1.12 layout.

Every command of sertool can be tried end to end without the real corpus: ``generate_demo_corpus`` writes
``Audios/``, ``Labels/labels_consensus.csv`` and ``Transcripts/`` exactly as MSP-Podcast lays them out, with
real speech from eSpeak NG (its C library loaded through ctypes) whose prosody follows arousal and dominance
and whose words follow valence. The generative model is documented in docs/data.md ("The demo corpus").

Why a separate process does the synthesis: eSpeak keeps hidden state from one utterance to the next (the
phase of its pitch flutter, its gain control, its cycle counters), so an utterance depends on everything
synthesised before it in the same process. A fresh worker process per corpus, fed the utterances in a fixed
order, makes the audio a function of the seed alone (eSpeak's noise generator, which it seeds from the clock,
is reseeded before each utterance); the worker also overlaps synthesis with the post-processing (resampling,
noise, writing) done here, on a second core.

That worker imports this module, so torch (through ``sertool.data.audio``) stays out of the module-level
imports: the worker starts in ~0.1 s instead of ~1 s.
"""
from __future__ import annotations

import ctypes
import dataclasses
import json
import math
import os
import struct
import subprocess
import sys
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import IO, Callable, Iterator, NamedTuple, Sequence

import numpy as np

from sertool.core.errors import SertoolError, missing_package
from sertool.core.io import csv_text
from sertool.core.splits import DEVELOPMENT, HELD_OUT_SPLITS, TEST1, TRAIN, UNLABELLED_SPLIT
from sertool.data.records import GENDERS, LABEL_MAX, LABEL_MIN, MSP_LABELS_HEADER
from sertool.guards.outputs import OutputPlan, remove_files

# ---------------------------------------------------------------------------------------------------------
# Corpus layout and size
# ---------------------------------------------------------------------------------------------------------

LABELLED_SPLITS: tuple[str, ...] = (TRAIN, *HELD_OUT_SPLITS)
# Share of each gender's labelled speakers that goes to Development and to Test1 (the rest is Train), at
# least one speaker of each gender per split. Splits are speaker-disjoint, as in MSP-Podcast.
_HELD_OUT_SPEAKER_SHARE = 0.2
_MIN_SPEAKERS = 2 * len(LABELLED_SPLITS)  # one speaker of each gender in each labelled split
_SEGMENTS_PER_EPISODE = 20  # MSP-PODCAST_<episode>_<segment>: a speaker's utterances fill episodes of <= 20

# Presets for the CLI's --size: keyword arguments of generate_demo_corpus.
DEMO_SIZES: dict[str, dict[str, int]] = {
    "tiny": {"num_speakers": 8, "utterances_per_speaker": 6, "test3_utterances": 8},  # 56 clips: smoke tests
    "small": {"num_speakers": 12, "utterances_per_speaker": 25, "test3_utterances": 30},  # 330 clips
    "default": {"num_speakers": 24, "utterances_per_speaker": 60, "test3_utterances": 120},  # 1,560 clips
    "large": {"num_speakers": 48, "utterances_per_speaker": 80, "test3_utterances": 240},  # 4,080 clips
}

# ---------------------------------------------------------------------------------------------------------
# Labels: class prior and class-conditional A/V/D
# ---------------------------------------------------------------------------------------------------------

# Imbalanced like MSP-Podcast's Train set: neutral dominates; O and X (A/V/D labels, no class) ~19 %.
EMOTION_PRIOR: dict[str, float] = {
    "N": 0.35, "H": 0.15, "A": 0.08, "S": 0.07, "C": 0.06, "U": 0.04, "D": 0.04, "F": 0.02,
    "O": 0.07, "X": 0.12,
}


class AttributeProfile(NamedTuple):
    """Class-conditional A/V/D: normal with these means (1..7 scale) and one standard deviation."""

    arousal: float
    valence: float
    dominance: float
    sd: float


CLASS_PROFILES: dict[str, AttributeProfile] = {
    "N": AttributeProfile(3.9, 4.1, 4.0, 0.55),
    "H": AttributeProfile(4.8, 5.6, 4.5, 0.65),
    "A": AttributeProfile(5.7, 2.2, 5.4, 0.65),
    "S": AttributeProfile(2.6, 2.4, 2.9, 0.60),
    "U": AttributeProfile(5.3, 4.6, 4.3, 0.70),
    "F": AttributeProfile(4.9, 2.7, 2.9, 0.70),
    "D": AttributeProfile(4.6, 2.5, 4.7, 0.65),
    "C": AttributeProfile(4.2, 2.8, 4.9, 0.65),
    # Other / no agreement: emotional content the raters could not name or agree on -> broad.
    "O": AttributeProfile(4.2, 4.0, 4.2, 1.10),
    "X": AttributeProfile(4.1, 3.9, 4.1, 1.20),
}
# Within a class, arousal and dominance still go together (they correlate strongly in MSP-Podcast).
_AROUSAL_DOMINANCE_CORRELATION = 0.5


def sample_emotion_classes(rng: np.random.Generator, num: int) -> list[str]:
    """Draw ``num`` EmoClass codes from ``EMOTION_PRIOR`` (a pure function of ``rng``)."""
    codes = list(EMOTION_PRIOR)
    probabilities = np.array([EMOTION_PRIOR[code] for code in codes])
    return [codes[index] for index in rng.choice(len(codes), size=num, p=probabilities / probabilities.sum())]


def sample_attributes(rng: np.random.Generator, emo_class: str) -> tuple[float, float, float]:
    """Draw (arousal, valence, dominance) for one utterance of ``emo_class``.

    Rater-mean-like: rounded to one decimal and clipped to [1, 7]. Dominance shares part of arousal's
    deviation from the class mean (correlation ``_AROUSAL_DOMINANCE_CORRELATION``).
    """
    profile = CLASS_PROFILES[emo_class]
    z_arousal, z_valence, z_own = rng.standard_normal(3)
    rho = _AROUSAL_DOMINANCE_CORRELATION
    z_dominance = rho * z_arousal + math.sqrt(1.0 - rho**2) * z_own
    arousal, valence, dominance = (
        round(float(np.clip(mean + profile.sd * z, LABEL_MIN, LABEL_MAX)), 1)
        for mean, z in ((profile.arousal, z_arousal), (profile.valence, z_valence), (profile.dominance, z_dominance))
    )
    return arousal, valence, dominance


def _centred(value: float) -> float:
    """Map the 1..7 scale to -1..1 (4, the scale's middle, to 0)."""
    return (value - 4.0) / 3.0


# ---------------------------------------------------------------------------------------------------------
# Words: valence lives mostly here
# ---------------------------------------------------------------------------------------------------------

# Slot fillers by part of speech and polarity. Template words and connectors are all neutral, so the
# positive-minus-negative count of a transcript is the count over these lists.
_LEXICON: dict[str, dict[str, tuple[str, ...]]] = {
    "adj": {
        "positive": ("wonderful", "great", "lovely", "brilliant", "amazing", "beautiful", "fantastic",
                     "delightful", "cheerful", "excellent", "pleasant", "perfect"),
        "negative": ("terrible", "awful", "horrible", "miserable", "dreadful", "painful", "ugly",
                     "disgusting", "boring", "hopeless", "nasty", "broken"),
        "neutral": ("ordinary", "normal", "usual", "different", "typical", "simple", "small", "long",
                    "modern", "regular", "average", "local"),
    },
    "noun": {
        "positive": ("gift", "party", "victory", "holiday", "friendship", "success", "sunshine",
                     "celebration", "reward", "smile", "festival", "bonus"),
        "negative": ("disaster", "accident", "failure", "mess", "problem", "injury", "funeral", "argument",
                     "loss", "crisis", "nightmare", "debt"),
        "neutral": ("meeting", "table", "schedule", "report", "street", "window", "train", "office",
                    "paper", "kitchen", "station", "weekend"),
    },
    "verb": {
        "positive": ("loved", "enjoyed", "admired", "celebrated", "adored", "praised", "welcomed",
                     "appreciated"),
        "negative": ("hated", "ruined", "lost", "feared", "wasted", "destroyed", "regretted", "despised"),
        "neutral": ("checked", "moved", "opened", "visited", "described", "measured", "noticed", "carried"),
    },
    "adv": {
        "positive": ("wonderfully", "happily", "beautifully", "gladly", "perfectly", "joyfully"),
        "negative": ("terribly", "sadly", "badly", "painfully", "horribly", "miserably"),
        "neutral": ("fairly", "mostly", "usually", "quite", "rather", "simply"),
    },
}
POSITIVE_WORDS = frozenset(word for slot in _LEXICON.values() for word in slot["positive"])
NEGATIVE_WORDS = frozenset(word for slot in _LEXICON.values() for word in slot["negative"])

_CLAUSE_TEMPLATES: tuple[str, ...] = (
    "the {noun} was {adj}",
    "I {verb} the {noun}",
    "honestly it was a {adj} {noun}",
    "we {verb} that {adj} {noun}",
    "my {noun} felt {adv} {adj}",
    "they said the {noun} looked {adj}",
    "you know the {noun} seemed {adj}",
    "it was {adv} {adj} to see the {noun}",
    "he {verb} every {noun}",
    "the whole {noun} went {adv}",
    "then the {noun} became {adj}",
    "she {verb} the {adj} {noun} again",
)
_CONNECTORS: tuple[str, ...] = (", and ", ", but ", ". ", ", so ", ", ")
_MAX_CLAUSES = 3
_HALF_CLAUSE_WORDS = 3  # clauses hold 4-7 words


def word_polarity_probabilities(valence: float) -> tuple[float, float, float]:
    """Probability that one slot word is (positive, negative, neutral) for an utterance of ``valence``.

    Two logistic ramps: at valence 4 a slot is neutral ~64 % of the time with equal positive and negative
    odds; towards 7 (1) nearly all slot words are positive (negative).
    """
    positive = 0.85 / (1.0 + math.exp(-2.2 * (valence - 4.6)))
    negative = 0.85 / (1.0 + math.exp(-2.2 * (3.4 - valence)))
    return positive, negative, 1.0 - positive - negative


def compose_transcript(rng: np.random.Generator, valence: float, *, target_words: int) -> str:
    """Join 1-3 filled clause templates into a sentence of about ``target_words`` words.

    Each slot draws its polarity from ``word_polarity_probabilities(valence)``, then a word of that
    polarity and part of speech.
    """
    probabilities = word_polarity_probabilities(valence)
    polarities = ("positive", "negative", "neutral")
    clauses: list[str] = []
    num_words = 0
    # Stop once within half a clause of the target: on average the sentence then hits it.
    while not clauses or (num_words + _HALF_CLAUSE_WORDS <= target_words and len(clauses) < _MAX_CLAUSES):
        template = _CLAUSE_TEMPLATES[rng.integers(len(_CLAUSE_TEMPLATES))]
        words = []
        for token in template.split():
            if token.startswith("{"):
                slot = _LEXICON[token.strip("{}")][polarities[rng.choice(3, p=probabilities)]]
                token = slot[rng.integers(len(slot))]
            words.append(token)
        clauses.append(" ".join(words))
        num_words += len(words)
    text = clauses[0]
    for clause in clauses[1:]:
        connector = _CONNECTORS[rng.integers(len(_CONNECTORS))]
        text += connector + (clause[0].upper() + clause[1:] if connector == ". " else clause)
    return text[0].upper() + text[1:] + "."


# ---------------------------------------------------------------------------------------------------------
# Speakers and prosody: arousal and dominance live mostly here
# ---------------------------------------------------------------------------------------------------------

# eSpeak NG voice variants (espeak-ng-data/voices/!v/<name>) of each gender, chosen for sounding like speech.
VOICE_VARIANTS: dict[str, tuple[str, ...]] = {
    "Male": ("m1", "m2", "m3", "m4", "m5", "m6", "m7", "robert", "paul", "michel", "m8", "quincy"),
    "Female": ("f1", "f2", "f3", "f4", "f5", "belinda", "linda", "steph", "Andrea", "Alicia", "aunty", "Annie"),
}
_LANGUAGE = "en"

# eSpeak's parameter scales: rate in words per minute (80..450), volume 0..200 (100 normal; above ~130 its
# output starts to saturate), pitch and pitch range 0..99 (50 = the voice's own; pitch 0/99 halve/double F0).
_RATE_WPM_LIMITS = (80.0, 450.0)
_VOLUME_LIMITS = (10.0, 200.0)
_PITCH_LIMITS = (0.0, 99.0)
_NEUTRAL_VOLUME = 80.0


@dataclass(frozen=True)
class _Speaker:
    """A synthetic speaker: an eSpeak voice variant with its own neutral prosody and recording level."""

    speaker_id: int
    gender: str
    split: str
    voice: str  # eSpeak voice name, e.g. "en+m3"
    pitch: float  # eSpeak pitch parameter of the speaker's neutral voice
    pitch_range: float
    rate_wpm: float
    gain_db: float  # recording level of the speaker's podcast


@dataclass(frozen=True)
class _Speech:
    """One eSpeak request: text, voice, the four prosody parameters on eSpeak's integer scales, and the seed
    of eSpeak's random generator (breathy voices mix in noise)."""

    text: str
    voice: str
    rate_wpm: int
    volume: int
    pitch: int
    pitch_range: int
    seed: int


class _Prosody(NamedTuple):
    """eSpeak prosody of one utterance, before rounding to eSpeak's integer parameters."""

    rate_wpm: float
    volume: float
    pitch: float
    pitch_range: float


def _prosody(
    speaker: _Speaker, arousal: float, valence: float, dominance: float, rng: np.random.Generator
) -> _Prosody:
    """eSpeak prosody for one utterance of ``speaker`` with these attributes (1..7).

    With a, v, d the attributes mapped to -1..1 (4 -> 0), and small per-utterance jitter:
    rate = speaker rate x (1 + 0.35a + 0.05d), pitch = speaker pitch + 24a + 4d + 3v,
    range = speaker range + 24a + 6d + 4v, volume = 80 + 45a + 15d; each clipped to eSpeak's limits.
    """
    a, v, d = _centred(arousal), _centred(valence), _centred(dominance)
    jitter_rate, jitter_pitch, jitter_range, jitter_volume = rng.standard_normal(4)
    rate = speaker.rate_wpm * (1.0 + 0.35 * a + 0.05 * d) * math.exp(0.04 * jitter_rate)
    pitch = speaker.pitch + 24.0 * a + 4.0 * d + 3.0 * v + 2.0 * jitter_pitch
    pitch_range = speaker.pitch_range + 24.0 * a + 6.0 * d + 4.0 * v + 3.0 * jitter_range
    volume = _NEUTRAL_VOLUME + 45.0 * a + 15.0 * d + 4.0 * jitter_volume
    return _Prosody(
        rate_wpm=float(np.clip(rate, *_RATE_WPM_LIMITS)),
        volume=float(np.clip(volume, *_VOLUME_LIMITS)),
        pitch=float(np.clip(pitch, *_PITCH_LIMITS)),
        pitch_range=float(np.clip(pitch_range, *_PITCH_LIMITS)),
    )


# ---------------------------------------------------------------------------------------------------------
# Recording: level, silence, noise
# ---------------------------------------------------------------------------------------------------------

_SNR_DB_RANGE = (10.0, 30.0)
_NOISE_EXPONENT_RANGE = (0.0, 2.0)  # power spectrum ~ 1/f^beta: 0 white, 1 pink, 2 brown
_SILENCE_S_RANGE = (0.1, 0.4)  # before and after the speech
_UTTERANCE_GAIN_DB_SD = 0.5  # level drift of one utterance around its speaker's recording level
_TARGET_SPEECH_S_RANGE = (1.0, 4.5)  # speech only; silences bring clips to ~1.5-6 s
# At a nominal rate of R words per minute, eSpeak says ~1.2 R of these short words per minute.
_WORDS_PER_NOMINAL_WORD = 1.2


class _Recording(NamedTuple):
    gain_db: float
    lead_s: float
    tail_s: float
    snr_db: float
    noise_exponent: float
    noise_seed: int


def coloured_noise(rng: np.random.Generator, num_samples: int, exponent: float) -> np.ndarray:
    """Unit-RMS noise whose power spectrum falls as 1/f^``exponent`` (0 white, 1 pink, 2 brown)."""
    # Shaped at a power-of-two length (an FFT of a large prime length is ~10x slower), then cut.
    fft_size = 1 << max(1, (num_samples - 1).bit_length())
    frequencies = np.fft.rfftfreq(fft_size)
    frequencies[0] = frequencies[1]  # no infinite gain at DC
    spectrum = np.fft.rfft(rng.standard_normal(fft_size)) / frequencies ** (exponent / 2.0)
    noise = np.fft.irfft(spectrum, n=fft_size)[:num_samples]
    noise -= noise.mean()
    return noise / max(float(np.sqrt(np.mean(noise**2))), 1e-12)


def _record(speech_16k: np.ndarray, recording: _Recording, sample_rate: int) -> np.ndarray:
    """Speech at its recording level, padded with silence, plus noise at the utterance's SNR."""
    speech = speech_16k * 10.0 ** (recording.gain_db / 20.0)
    speech_rms = float(np.sqrt(np.mean(speech**2))) if speech.size else 0.0
    lead, tail = int(round(recording.lead_s * sample_rate)), int(round(recording.tail_s * sample_rate))
    signal = np.concatenate([np.zeros(lead), speech, np.zeros(tail)])
    noise = coloured_noise(np.random.default_rng(recording.noise_seed), signal.size, recording.noise_exponent)
    signal += noise * speech_rms * 10.0 ** (-recording.snr_db / 20.0)
    # PCM_16 cannot hold |x| >= 1; clipping the rare loud peak is what a recorder would do.
    return np.clip(signal, -1.0, 1.0 - 2.0**-15).astype(np.float32)


# ---------------------------------------------------------------------------------------------------------
# eSpeak NG through ctypes (see espeak-ng's speak_lib.h)
# ---------------------------------------------------------------------------------------------------------

ESPEAK_SAMPLE_RATE = 22_050  # Hz, eSpeak NG's native output rate
_AUDIO_OUTPUT_SYNCHRONOUS = 2  # espeak_AUDIO_OUTPUT: synthesise into the callback, return when done
_INITIALIZE_DONT_EXIT = 0x8000  # report a missing espeak-ng-data instead of exiting the process
_POS_CHARACTER = 1  # espeak_POSITION_TYPE
_CHARS_UTF8 = 1  # espeak_Synth flags
_EE_OK = 0  # espeak_ERROR
# espeak_PARAMETER
_ESPEAK_RATE, _ESPEAK_VOLUME, _ESPEAK_PITCH, _ESPEAK_RANGE = 1, 2, 3, 4
# int SynthCallback(short *wav, int numsamples, espeak_EVENT *events); events are not read here.
_SYNTH_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)


def _require_espeak() -> ModuleType:
    """Import ``espeakng_loader`` or tell the user how to install it."""
    try:
        import espeakng_loader
    except ImportError:
        raise missing_package("espeakng-loader", needed_for="the demo corpus (eSpeak NG speech)") from None
    return espeakng_loader


class _Espeak:
    """eSpeak NG loaded into this process: synchronous synthesis into memory, 16-bit at 22.05 kHz."""

    def __init__(self) -> None:
        loader = _require_espeak()
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

    def synthesise(self, speech: _Speech) -> np.ndarray:
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


_HEADER = struct.Struct("<Q")  # samples in the clip that follows on the worker's stdout


def _synthesise_in_order(speeches: Sequence[_Speech]) -> Iterator[np.ndarray]:
    """Yield the int16 ``ESPEAK_SAMPLE_RATE`` waveform of each of ``speeches``, in order.

    The synthesis runs in one fresh Python process that sees the same sequence every time: that is what
    makes the audio a function of the seed (see the module docstring). A plain subprocess rather than
    multiprocessing: it needs no ``if __name__ == "__main__"`` guard in the caller's script and never
    inherits an eSpeak already loaded here. The requests go in through a file and the audio comes back on
    the worker's stdout, so neither side can block the other on a full pipe.
    """
    with tempfile.TemporaryDirectory(prefix="sertool-demo-") as scratch:
        requests_path, log_path = Path(scratch) / "speech.json", Path(scratch) / "worker.log"
        requests_path.write_text(json.dumps([dataclasses.asdict(speech) for speech in speeches]), encoding="utf-8")
        command = [sys.executable, "-c", f"from {__name__} import _serve; _serve({str(requests_path)!r})"]
        package_root = str(Path(__file__).resolve().parents[2])  # the folder that holds sertool/
        python_path = os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")]))
        with log_path.open("wb") as log, subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=log, env={**os.environ, "PYTHONPATH": python_path}
        ) as worker:
            stdout = worker.stdout
            assert stdout is not None, "Popen(stdout=PIPE) always gives a pipe"

            def failure(done: int) -> RuntimeError:
                worker.wait()
                return RuntimeError(
                    f"the eSpeak NG worker stopped after {done} of {len(speeches)} utterances (exit status "
                    f"{worker.returncode}): {log_path.read_text(errors='replace')[-2000:]}"
                )

            try:
                for done in range(len(speeches)):
                    header = stdout.read(_HEADER.size)
                    if len(header) < _HEADER.size:
                        raise failure(done)
                    (num_samples,) = _HEADER.unpack(header)
                    data = stdout.read(2 * num_samples)
                    if len(data) < 2 * num_samples:
                        raise failure(done)
                    yield np.frombuffer(data, dtype="<i2")
                if worker.wait() != 0:
                    raise failure(len(speeches))
            finally:
                if worker.poll() is None:  # the caller gave up early (an error, Ctrl-C)
                    worker.kill()


def _serve(requests_path: str) -> None:
    """Worker-process entry point: synthesise the JSON list of requests at ``requests_path``, in order,
    onto stdout (each clip as a ``_HEADER`` sample count, then little-endian int16 samples)."""
    channel = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # anything the C library prints goes to the log, never into the audio stream
    engine = _Espeak()  # the one initialisation of this process
    for request in json.loads(Path(requests_path).read_text(encoding="utf-8")):
        samples = engine.synthesise(_Speech(**request))
        channel.write(_HEADER.pack(samples.size))
        channel.write(samples.astype("<i2").tobytes())
    channel.flush()


# ---------------------------------------------------------------------------------------------------------
# The corpus
# ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DemoSummary:
    """What ``generate_demo_corpus`` wrote.

    Attributes:
        out_dir: the corpus root (holds Audios/, Labels/, Transcripts/).
        seed: the seed it was generated from.
        utterances: clips per split (Train, Development, Test1, Test3).
        speakers: speakers per split.
        emo_classes: labelled clips per EmoClass code (Test3 excluded: its labels are withheld).
        duration_s: total audio, all splits.
    """

    out_dir: Path
    seed: int
    utterances: dict[str, int]
    speakers: dict[str, int]
    emo_classes: dict[str, int]
    duration_s: float

    @property
    def num_utterances(self) -> int:
        """All clips, Test3 included."""
        return sum(self.utterances.values())


@dataclass(frozen=True)
class _Planned:
    """One utterance, fully drawn before any audio is made."""

    file_name: str
    speaker: _Speaker
    emo_class: str
    arousal: float
    valence: float
    dominance: float
    speech: _Speech
    recording: _Recording


def generate_demo_corpus(
    out_dir: str | Path,
    *,
    num_speakers: int = 24,
    utterances_per_speaker: int = 60,
    test3_utterances: int = 120,
    seed: int = 0,
    force: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> DemoSummary:
    """Synthesise a small emotional-speech corpus in the MSP-Podcast v1.12 layout.

    Writes ``Audios/MSP-PODCAST_XXXX_YYYY.wav`` (16 kHz mono 16-bit), ``Audios/MSP-PODCAST_test3_NNNN.wav``,
    ``Transcripts/<stem>.txt`` for every clip and ``Labels/labels_consensus.csv`` (Train, Development and
    Test1 rows; Test3 labels are withheld, as in the challenge). The CSV is written last, through a
    temporary file: an interrupted run leaves no label file rather than a half-written one.

    Example:
        >>> summary = generate_demo_corpus("demo/corpus", seed=0)  # doctest: +SKIP
        >>> summary.utterances  # doctest: +SKIP
        {'Train': 960, 'Development': 240, 'Test1': 240, 'Test3': 120}

    Args:
        out_dir: corpus root; created if missing.
        num_speakers: labelled speakers, half of each gender, split speaker-disjoint about 60/20/20 into
            Train/Development/Test1 per gender; at least 6.
        utterances_per_speaker: clips per labelled speaker.
        test3_utterances: Test3 clips, spoken by further speakers (both genders); 0 for none.
        seed: same seed, same bytes (CSV, transcripts and audio); another seed, another corpus.
        force: write into a non-empty ``out_dir``. Its labels_consensus.csv and the ``MSP-PODCAST_*``
            clips and transcripts the new corpus does not overwrite are removed, so the folder then holds
            one corpus; other files are left alone.
        progress: called as ``progress(done, total)`` after each clip is written.

    Returns:
        A ``DemoSummary`` (clips and speakers per split, class counts, total duration).

    Raises:
        SertoolError: ``out_dir`` is a file, or is not empty and ``force`` is not set; a size is out of
            range; eSpeak NG (espeakng-loader) is not installed.
    """
    from sertool.data.audio import SAMPLE_RATE, encode_wav  # deferred: see the module docstring

    outputs = OutputPlan(force=force)
    out_dir = outputs.folder(out_dir, flag="OUT")
    _check_sizes(num_speakers, utterances_per_speaker, test3_utterances)
    _require_espeak()
    _prepare_folder(out_dir, force=force)

    plan = _plan_corpus(
        np.random.default_rng(seed),
        num_speakers=num_speakers,
        utterances_per_speaker=utterances_per_speaker,
        test3_utterances=test3_utterances,
    )
    audio_dir, transcript_dir, label_dir = (out_dir / name for name in ("Audios", "Transcripts", "Labels"))
    total_samples = 0
    # The folder is held while the corpus is written: a second `data demo` into it is refused at once.
    with outputs.holding(out_dir, flag="OUT"):
        if force:
            _remove_previous_corpus(out_dir, keep={item.file_name for item in plan})
        synthesised = _synthesise_in_order([item.speech for item in plan])
        for start in range(0, len(plan), _RESAMPLE_BATCH):
            batch = plan[start:start + _RESAMPLE_BATCH]
            speech_16k = _resample_batch([next(synthesised) for _ in batch], SAMPLE_RATE)
            for offset, (item, speech) in enumerate(zip(batch, speech_16k, strict=True), start=1):
                clip = _record(speech, item.recording, SAMPLE_RATE)
                outputs.write_data(audio_dir / item.file_name, encode_wav(clip, SAMPLE_RATE))
                with outputs.writing(transcript_dir / f"{Path(item.file_name).stem}.txt") as handle:
                    handle.write(item.speech.text + "\n")
                total_samples += clip.size
                if progress is not None:
                    progress(start + offset, len(plan))
        # The labels last: a folder without them is visibly unfinished, and is not read as a corpus.
        with outputs.writing(label_dir / "labels_consensus.csv", newline="") as handle:
            _write_labels(handle, [item for item in plan if item.speaker.split != UNLABELLED_SPLIT],
                          where=label_dir / "labels_consensus.csv")
    return _summarise(out_dir, seed, plan, total_samples / SAMPLE_RATE)


_RESAMPLE_BATCH = 16  # clips resampled together: torchaudio builds its sinc kernel once per call


def _resample_batch(waveforms: Sequence[np.ndarray], sample_rate: int) -> list[np.ndarray]:
    """int16 eSpeak clips -> float64 at ``sample_rate``, through ``sertool.data.audio.resample``.

    The clips are zero-padded to a common length and resampled in one call; each is then cut to the length
    a call on it alone gives (ceil(n x new / old)). The sinc filter sees the same zeros past a clip's end
    either way, so the result matches one-at-a-time resampling (to float rounding).
    """
    import torch

    from sertool.data.audio import resample

    batch = np.zeros((len(waveforms), max(waveform.size for waveform in waveforms)), dtype=np.float32)
    for row, waveform in zip(batch, waveforms, strict=True):
        row[:waveform.size] = waveform / 32768.0
    resampled = resample(torch.from_numpy(batch), ESPEAK_SAMPLE_RATE, sample_rate).numpy().astype(np.float64)
    return [
        resampled[index, :math.ceil(waveform.size * sample_rate / ESPEAK_SAMPLE_RATE)]
        for index, waveform in enumerate(waveforms)
    ]


def _check_sizes(num_speakers: int, utterances_per_speaker: int, test3_utterances: int) -> None:
    if num_speakers < _MIN_SPEAKERS:
        raise SertoolError(
            f"num_speakers={num_speakers}: the demo corpus needs at least {_MIN_SPEAKERS} speakers "
            "(one of each gender in Train, Development and Test1)"
        )
    if utterances_per_speaker < 1:
        raise SertoolError(f"utterances_per_speaker={utterances_per_speaker}: give at least 1")
    if test3_utterances < 0:
        raise SertoolError(f"test3_utterances={test3_utterances}: give 0 or more")


def _prepare_folder(out_dir: Path, *, force: bool) -> None:
    if out_dir.is_dir() and any(out_dir.iterdir()) and not force:
        raise SertoolError(
            f"{out_dir} is not empty; choose an empty or new folder, or pass --force to write the demo corpus "
            "into it (replacing its MSP-PODCAST_* clips, transcripts and labels_consensus.csv)"
        )


def _remove_previous_corpus(out_dir: Path, *, keep: set[str]) -> None:
    """Remove the label file first (a folder without one is visibly unfinished), then the clips and
    transcripts of this layout that the new corpus will not overwrite (stale Test3 clips would otherwise
    join the new Test3)."""
    remove_files([out_dir / "Labels" / "labels_consensus.csv"])
    keep_stems = {Path(name).stem for name in keep}
    for folder, suffix in (("Audios", ".wav"), ("Transcripts", ".txt")):
        remove_files(path for path in (out_dir / folder).glob(f"MSP-PODCAST_*{suffix}") if path.stem not in keep_stems)


def _plan_corpus(
    rng: np.random.Generator, *, num_speakers: int, utterances_per_speaker: int, test3_utterances: int
) -> list[_Planned]:
    """Draw every random choice of the corpus, in a fixed order, from ``rng``."""
    speakers = _draw_speakers(rng, num_speakers=num_speakers, test3_utterances=test3_utterances)
    labelled = [speaker for speaker in speakers if speaker.split != UNLABELLED_SPLIT]
    test3 = [speaker for speaker in speakers if speaker.split == UNLABELLED_SPLIT]

    counts = {speaker.speaker_id: utterances_per_speaker for speaker in labelled}
    for index, speaker in enumerate(test3):  # spread the Test3 clips evenly over its speakers
        counts[speaker.speaker_id] = test3_utterances // len(test3) + (index < test3_utterances % len(test3))

    utterances: list[tuple[_Speaker, str, tuple[float, float, float], _Speech, _Recording]] = []
    for speaker in speakers:
        for emo_class in sample_emotion_classes(rng, counts[speaker.speaker_id]):
            utterances.append((speaker, emo_class, *_draw_utterance(rng, speaker, emo_class)))

    names = _file_names(rng, [speaker for speaker, *_ in utterances])
    return [
        _Planned(name, speaker, emo_class, *attributes, speech, recording)
        for name, (speaker, emo_class, attributes, speech, recording) in zip(names, utterances, strict=True)
    ]


def _draw_speakers(rng: np.random.Generator, *, num_speakers: int, test3_utterances: int) -> list[_Speaker]:
    """Speakers of both genders for each split; voice variants shuffled, then reused with other settings."""
    num_male = num_speakers // 2
    num_test3 = 0 if test3_utterances == 0 else 2 * max(1, round(num_speakers / 12))
    splits_by_gender: dict[str, list[str]] = {}
    for gender, count in (("Male", num_male), ("Female", num_speakers - num_male)):
        held_out = max(1, round(_HELD_OUT_SPEAKER_SHARE * count))
        splits_by_gender[gender] = (
            [TRAIN] * (count - 2 * held_out) + [DEVELOPMENT] * held_out + [TEST1] * held_out
            + [UNLABELLED_SPLIT] * (num_test3 // 2)
        )
    total = sum(len(splits) for splits in splits_by_gender.values())
    speaker_ids = rng.choice(np.arange(1, max(3000, 2 * total)), size=total, replace=False)
    speakers: list[_Speaker] = []
    for gender in GENDERS:
        variants = [VOICE_VARIANTS[gender][index] for index in rng.permutation(len(VOICE_VARIANTS[gender]))]
        for index, split in enumerate(splits_by_gender[gender]):
            speakers.append(_Speaker(
                speaker_id=int(speaker_ids[len(speakers)]),
                gender=gender,
                split=split,
                voice=f"{_LANGUAGE}+{variants[index % len(variants)]}",
                pitch=float(rng.uniform(40.0, 60.0)),
                pitch_range=float(rng.uniform(40.0, 60.0)),
                rate_wpm=float(rng.uniform(150.0, 185.0)),
                gain_db=float(rng.uniform(-3.0, 0.0)),
            ))
    return speakers


def _draw_utterance(
    rng: np.random.Generator, speaker: _Speaker, emo_class: str
) -> tuple[tuple[float, float, float], _Speech, _Recording]:
    arousal, valence, dominance = sample_attributes(rng, emo_class)
    prosody = _prosody(speaker, arousal, valence, dominance, rng)
    # Words are added until they fill a target time at this rate, so fast (aroused) speech says more.
    target_speech_s = rng.uniform(*_TARGET_SPEECH_S_RANGE)
    target_words = max(1, int(target_speech_s * prosody.rate_wpm / 60.0 * _WORDS_PER_NOMINAL_WORD))
    text = compose_transcript(rng, valence, target_words=target_words)
    recording = _Recording(
        gain_db=speaker.gain_db + _UTTERANCE_GAIN_DB_SD * float(rng.standard_normal()),
        lead_s=float(rng.uniform(*_SILENCE_S_RANGE)),
        tail_s=float(rng.uniform(*_SILENCE_S_RANGE)),
        snr_db=float(rng.uniform(*_SNR_DB_RANGE)),
        noise_exponent=float(rng.uniform(*_NOISE_EXPONENT_RANGE)),
        noise_seed=int(rng.integers(2**63)),
    )
    speech = _Speech(
        text=text,
        voice=speaker.voice,
        rate_wpm=round(prosody.rate_wpm),
        volume=round(prosody.volume),
        pitch=round(prosody.pitch),
        pitch_range=round(prosody.pitch_range),
        seed=int(rng.integers(2**31)),
    )
    return (arousal, valence, dominance), speech, recording


def _file_names(rng: np.random.Generator, speakers: Sequence[_Speaker]) -> list[str]:
    """MSP-Podcast names: ``MSP-PODCAST_<episode>_<segment>.wav``, ``MSP-PODCAST_test3_<n>.wav``.

    Each labelled speaker's clips fill episodes of up to ``_SEGMENTS_PER_EPISODE`` segments; episode and
    Test3 numbers are shuffled so that neither reveals the speaker or the split.
    """
    per_speaker = Counter(speaker.speaker_id for speaker in speakers if speaker.split != UNLABELLED_SPLIT)
    episodes = {speaker_id: math.ceil(count / _SEGMENTS_PER_EPISODE) for speaker_id, count in per_speaker.items()}
    episode_numbers = iter(rng.permutation(sum(episodes.values())) + 1)
    episode_ids = {
        speaker_id: [int(next(episode_numbers)) for _ in range(count)] for speaker_id, count in episodes.items()
    }
    test3_numbers = iter(rng.permutation(sum(speaker.split == UNLABELLED_SPLIT for speaker in speakers)) + 1)

    seen: Counter[int] = Counter()
    names = []
    for speaker in speakers:
        if speaker.split == UNLABELLED_SPLIT:
            names.append(f"MSP-PODCAST_test3_{int(next(test3_numbers)):04d}.wav")
            continue
        episode, segment = divmod(seen[speaker.speaker_id], _SEGMENTS_PER_EPISODE)
        seen[speaker.speaker_id] += 1
        names.append(f"MSP-PODCAST_{episode_ids[speaker.speaker_id][episode]:04d}_{segment + 1:04d}.wav")
    return names


def _write_labels(handle: IO[str], items: Sequence[_Planned], *, where: Path) -> None:
    """Write labels_consensus.csv, sorted by file name, to ``handle`` (``where`` names it in messages)."""
    rows = ([item.file_name, item.emo_class, f"{item.arousal:.1f}", f"{item.valence:.1f}", f"{item.dominance:.1f}",
             str(item.speaker.speaker_id), item.speaker.gender, item.speaker.split]
            for item in sorted(items, key=lambda item: item.file_name))
    handle.write(csv_text(MSP_LABELS_HEADER, rows, destination=where))


def _summarise(out_dir: Path, seed: int, plan: Sequence[_Planned], duration_s: float) -> DemoSummary:
    splits = (*LABELLED_SPLITS, UNLABELLED_SPLIT)
    labelled = [item for item in plan if item.speaker.split != UNLABELLED_SPLIT]
    return DemoSummary(
        out_dir=out_dir,
        seed=seed,
        utterances={split: sum(item.speaker.split == split for item in plan) for split in splits},
        speakers={
            split: len({item.speaker.speaker_id for item in plan if item.speaker.split == split}) for split in splits
        },
        emo_classes=dict(Counter(item.emo_class for item in labelled).most_common()),
        duration_s=duration_s,
    )
