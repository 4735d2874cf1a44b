"""What `sertool data info` reports about a corpus, computed as plain data (rendering is the CLI's)."""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from sertool.data.records import EMO_CLASSES, NO_CLASS_CODES
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
    summaries = {name: SplitSummary(name) for name in corpus.split_names()}
    total = SplitSummary("all")
    speakers: dict[str, set[str]] = {name: set() for name in [*summaries, "all"]}
    for utt in corpus.utterances:
        duration_s, labelled, gender, emo_class = utt.duration_s, utt.has_labels, utt.gender or "unknown", utt.emo_class or "?"
        for summary in (summaries[utt.split], total):
            summary.utterances += 1
            summary.hours += duration_s / 3600
            summary.min_duration_s = duration_s if summary.utterances == 1 else min(summary.min_duration_s, duration_s)
            summary.max_duration_s = max(summary.max_duration_s, duration_s)
            summary.labelled += labelled
            summary.with_transcript += utt.transcript is not None
            summary.genders[gender] += 1
            summary.classes[emo_class] += 1
            if utt.speaker is not None:
                speakers[summary.name].add(utt.speaker)
    for summary in [*summaries.values(), total]:
        summary.speakers = len(speakers[summary.name])
    return [*summaries.values(), total]


def class_order(summaries: list[SplitSummary]) -> list[str]:
    """Class codes present, in MSP-Podcast's code order, unknown last."""
    present = set().union(*(summary.classes for summary in summaries))
    return [code for code in [*EMO_CLASSES, "?"] if code in present]
