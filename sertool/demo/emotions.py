"""The demo corpus's generative model: how an emotion class, its A/V/D labels, the words and the prosody of
an utterance are drawn (documented in docs/data.md, "The demo corpus").

- Labels: an EmoClass from an MSP-Podcast-like prior, then arousal, valence and dominance from a
  class-conditional normal (``sample_emotion_classes``, ``sample_attributes``).
- Words: valence lives mostly here, in the polarity of the slot words of a few clause templates
  (``compose_transcript``).
- Prosody: arousal and dominance live mostly here, in eSpeak's rate, volume, pitch and pitch range around
  each speaker's own (``draw_prosody``).

Every function is a pure function of the ``numpy`` generator it is given.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from sertool.data.records import LABEL_MAX, LABEL_MIN
from sertool.demo.espeak import PITCH_LIMITS, RATE_WPM_LIMITS, VOLUME_LIMITS

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

_NEUTRAL_VOLUME = 80.0


@dataclass(frozen=True)
class Speaker:
    """A synthetic speaker: an eSpeak voice variant with its own neutral prosody and recording level."""

    speaker_id: int
    gender: str
    split: str
    voice: str  # eSpeak voice name, e.g. "en+m3"
    pitch: float  # eSpeak pitch parameter of the speaker's neutral voice
    pitch_range: float
    rate_wpm: float
    gain_db: float  # recording level of the speaker's podcast


class Prosody(NamedTuple):
    """eSpeak prosody of one utterance, before rounding to eSpeak's integer parameters."""

    rate_wpm: float
    volume: float
    pitch: float
    pitch_range: float


def draw_prosody(
    speaker: Speaker, arousal: float, valence: float, dominance: float, rng: np.random.Generator
) -> Prosody:
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
    return Prosody(
        rate_wpm=float(np.clip(rate, *RATE_WPM_LIMITS)),
        volume=float(np.clip(volume, *VOLUME_LIMITS)),
        pitch=float(np.clip(pitch, *PITCH_LIMITS)),
        pitch_range=float(np.clip(pitch_range, *PITCH_LIMITS)),
    )
