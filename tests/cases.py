"""``@case``: a test that proves one reliability case; docs/reliability.md's tables are generated from these.

    @case("guards", "a 300-character --out name", "one line naming --out and the limit; nothing written")
    def test_...():

``scripts/reliability_table.py`` reads the decorators from the test files' source (nothing is imported or
run) and writes one table per kind into docs/reliability.md; tests/test_docs.py checks the file is current.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

Test = TypeVar("Test", bound=Callable[..., object])

# The tables of docs/reliability.md, in their order there: kind → the table's heading.
KINDS = {
    "guards": "Input, output and errors: the guards",
    "values": "Values on the scale, numbers that stay finite",
    "data": "Data",
    "inference": "Inference",
    "training": "Training",
    "checkpoints": "Checkpoints and model folders",
}


def case(kind: str, what: str, outcome: str) -> Callable[[Test], Test]:
    """Mark a test as the proof of one case: ``what`` the hostile input is, ``outcome`` what sertool does.

    Args:
        kind: the table the case belongs to (a key of ``KINDS``).
        what: the input or event, in a few words ("a FileName of ../../x.wav").
        outcome: what happens, as the user sees it ("the row is dropped, named: outside Audios/").
    """
    if kind not in KINDS:
        raise ValueError(f"case kind {kind!r} is not one of {', '.join(KINDS)}")

    def mark(test: Test) -> Test:
        cases = getattr(test, "reliability_cases", [])
        test.reliability_cases = [*cases, (kind, what, outcome)]  # type: ignore[attr-defined]
        return test

    return mark
