"""What `sertool data info` reports about a corpus, computed as plain data (rendering is the CLI's)."""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from sertool.data.records import EMO_CLASSES, NO_CLASS_CODES, Utterance
from sertool.data.rows import Corpus


@dataclass
class SplitSummary:
    """Counts of one split."""

    name: str
    utterances: int = 0
    hours: float = 0.0
    speakers: int = 0
    labelled: int = 0
    with_transcript: int = 0
    min_duration_s: float = 0.0
    max_duration_s: float = 0.0
    genders: Counter[str] = field(default_factory=Counter)  # "Male", "Female", "unknown"
    classes: Counter[str] = field(default_factory=Counter)  # EmoClass code, or "?" where unknown

    @property
    def no_class_share(self) -> float:
        """Share of O (other) and X (no agreement) among the utterances."""
        return sum(self.classes[code] for code in NO_CLASS_CODES) / self.utterances if self.utterances else 0.0


def summarize(corpus: Corpus) -> list[SplitSummary]:
    """One summary per split (in corpus order) followed by one named ``all``."""
    by_split: dict[str, list[Utterance]] = {name: [] for name in corpus.split_names()}
    for utt in corpus.utterances:
        by_split[utt.split].append(utt)
    # Per split with builtins over lists, not one update per utterance and summary: MSP-Podcast has 150,000.
    return [_summary(name, utterances) for name, utterances in [*by_split.items(), ("all", corpus.utterances)]]


def _summary(name: str, utterances: list[Utterance]) -> SplitSummary:
    durations_s = [utt.duration_s for utt in utterances]
    return SplitSummary(
        name, utterances=len(utterances), hours=sum(duration_s / 3600 for duration_s in durations_s),
        speakers=len({utt.speaker for utt in utterances if utt.speaker is not None}),
        labelled=sum(utt.has_labels for utt in utterances),
        with_transcript=sum(utt.transcript is not None for utt in utterances),
        min_duration_s=min(durations_s, default=0.0), max_duration_s=max(durations_s, default=0.0),
        genders=Counter(utt.gender or "unknown" for utt in utterances),
        classes=Counter(utt.emo_class or "?" for utt in utterances))


def class_order(summaries: list[SplitSummary]) -> list[str]:
    """Class codes present, in MSP-Podcast's code order, unknown last."""
    present = set().union(*(summary.classes for summary in summaries))
    return [code for code in [*EMO_CLASSES, "?"] if code in present]
