"""Figure 2's choice of speakers: a seeded random draw (the paper's), or the most frequent ones."""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from sertool.core.errors import SertoolError
from sertool.data.records import Utterance
from sertool.data.selection import SPEAKER_CHOICES, choose_utterances

# 30 speakers; speaker k has 3 + k utterances, so the most frequent are s29, s28, ...
UTTERANCES = [Utterance(id=f"s{k}_{i}", audio_path=Path(f"/c/s{k}_{i}.wav"), split="Train", duration_s=3.0,
                        speaker=f"s{k}") for k in range(30) for i in range(3 + k)]


def _speakers(chosen: list[Utterance]) -> set[str]:
    return {utt.speaker for utt in chosen}


def test_random_speakers_are_a_seeded_draw_among_those_with_enough_utterances():
    draws = [_speakers(choose_utterances(UTTERANCES, num_speakers=10, per_speaker=5, seed=seed)) for seed in range(6)]
    assert draws[0] == _speakers(choose_utterances(UTTERANCES, num_speakers=10, per_speaker=5, seed=0))
    assert len({frozenset(draw) for draw in draws}) > 1  # the seed decides
    eligible = {f"s{k}" for k in range(2, 30)}  # at least 5 utterances
    assert all(len(draw) == 10 and draw <= eligible for draw in draws)
    top = {f"s{k}" for k in range(20, 30)}
    assert any(draw != top for draw in draws)  # not the most frequent ones
    # Over draws every eligible speaker can come up, the rare ones too.
    seen = set().union(*(_speakers(choose_utterances(UTTERANCES, num_speakers=10, per_speaker=5, seed=seed))
                         for seed in range(40)))
    assert seen == eligible


def test_most_frequent_speakers_remain_an_option_and_each_gets_distinct_utterances():
    chosen = choose_utterances(UTTERANCES, num_speakers=4, per_speaker=6, seed=3, speakers="most-frequent")
    assert _speakers(chosen) == {"s29", "s28", "s27", "s26"}
    assert set(Counter(utt.speaker for utt in chosen).values()) == {6} and len({u.id for u in chosen}) == 24
    # The command line offers exactly these two draws (the flag's choices, as a user sees them).
    from sertool.cli.commands import cli
    flag = next(param for param in cli.commands["data"].commands["speakers"].params if param.name == "speaker_choice")
    assert tuple(flag.type.choices) == SPEAKER_CHOICES == ("random", "most-frequent")
    with pytest.raises(SertoolError, match="--speakers 'loudest'"):
        choose_utterances(UTTERANCES, num_speakers=4, per_speaker=6, speakers="loudest")
    with pytest.raises(SertoolError, match="fewer than two speakers have 40 utterances"):
        choose_utterances(UTTERANCES, num_speakers=4, per_speaker=40)
