"""What a reader kept, dropped and warned about: every problem names its file or row."""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Problem:
    """One bad item: ``where`` is a file or ``file:row``; ``reason`` a short category for summaries;
    ``split`` the row's split as written, where it could be read (so a command on one split can tell
    whether the problem concerns it)."""

    where: str
    reason: str
    detail: str
    split: str | None = None

    def __str__(self) -> str:
        return f"{self.where}: {self.reason}: {self.detail}"


@dataclass
class LoadReport:
    """Dropped rows and warnings of one corpus read, for the summary every command prints."""

    dropped: list[Problem] = field(default_factory=list)
    warnings: list[Problem] = field(default_factory=list)

    def drop(self, where: str, reason: str, detail: str, *, split: str | None = None) -> None:
        """Record a row that will not be used."""
        self.dropped.append(Problem(where, reason, detail, split))

    def warn(self, where: str, reason: str, detail: str) -> None:
        """Record something the user should know that does not drop the row."""
        self.warnings.append(Problem(where, reason, detail))

    def dropped_by_reason(self) -> Counter[str]:
        """How many rows were dropped, per reason."""
        return Counter(problem.reason for problem in self.dropped)

    def warnings_by_reason(self) -> Counter[str]:
        """How many warnings were raised, per reason."""
        return Counter(problem.reason for problem in self.warnings)

    def summary(self) -> str:
        """One line, e.g. ``dropped 3 rows (2 missing audio, 1 label out of range); 5 missing transcripts``."""
        parts = []
        if self.dropped:
            reasons = ", ".join(f"{count} {reason}" for reason, count in self.dropped_by_reason().most_common())
            parts.append(f"dropped {len(self.dropped)} row{'s' if len(self.dropped) != 1 else ''} ({reasons})")
        for reason, count in self.warnings_by_reason().most_common():
            parts.append(f"{count} {reason}")
        return "; ".join(parts) if parts else "no problems"
