"""Figure 2 of the paper: do a speaker extractor's embeddings separate this corpus's speakers?

Embeddings of ``per_speaker`` utterances from each of ``num_speakers`` speakers, projected to 2-D with PCA
and plotted by speaker. The separation is also given as a number, the Fisher ratio of the 2-D points
(between-speaker over within-speaker variance): well above 1 means the extractor tells the speakers apart.
"""
from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from sertool.data.records import Utterance
from sertool.errors import SertoolError, missing_package
from sertool.inference.runner import DEFAULT_EVAL_BATCH_S
from sertool.progress import task


@dataclass
class SpeakerMap:
    """2-D points per utterance with their speakers, and how well they separate."""

    points: np.ndarray  # [N, 2]
    speakers: list[str]
    fisher_ratio: float
    explained_variance: float  # share of the embeddings' variance the two components keep


# How the speakers of the figure are chosen (CLI: --speakers).
SPEAKER_CHOICES: tuple[str, ...] = ("random", "most-frequent")


def choose_utterances(utterances: Sequence[Utterance], *, num_speakers: int, per_speaker: int,
                      seed: int = 0, speakers: str = "random") -> list[Utterance]:
    """``per_speaker`` utterances of each of ``num_speakers`` speakers.

    Args:
        utterances: where to choose from (one split).
        num_speakers: how many speakers.
        per_speaker: utterances per speaker; only speakers with at least that many take part.
        seed: the random draw of speakers (``"random"``) and of each speaker's utterances.
        speakers: ``"random"``, a seeded draw among the speakers with enough utterances (the paper's 10
            random speakers), or ``"most-frequent"``, those with the most utterances (ties by name).

    Raises:
        SertoolError: an unknown ``speakers``, or fewer than two speakers have enough utterances.
    """
    if speakers not in SPEAKER_CHOICES:
        raise SertoolError(f"--speakers {speakers!r}: choose one of {', '.join(SPEAKER_CHOICES)}")
    by_speaker: dict[str, list[Utterance]] = defaultdict(list)
    for utt in utterances:
        if utt.speaker is not None:
            by_speaker[utt.speaker].append(utt)
    eligible = sorted((s for s, items in by_speaker.items() if len(items) >= per_speaker),
                      key=lambda s: (-len(by_speaker[s]), s))
    if len(eligible) < 2:
        raise SertoolError(f"fewer than two speakers have {per_speaker} utterances; lower --per-speaker")
    rng = np.random.default_rng(seed)
    if speakers == "random":
        # Sorted first so the draw depends on the seed, not on the corpus's row order.
        eligible = [eligible[index] for index in sorted(rng.choice(len(eligible), min(num_speakers, len(eligible)),
                                                                   replace=False))]
    else:
        eligible = eligible[:num_speakers]
    chosen = []
    for speaker in eligible:
        items = by_speaker[speaker]
        chosen.extend(items[index] for index in sorted(rng.choice(len(items), per_speaker, replace=False)))
    return chosen


def speaker_map(utterances: Sequence[Utterance], speaker_model: str, *, device: str = "cpu") -> SpeakerMap:
    """Embed ``utterances`` with ``speaker_model`` (hub id, folder, or ``log-mel-stats``) and project to 2-D."""
    from sertool.data.dataset import UtteranceDataset, collate
    from sertool.models.speaker_embedding import build_speaker_embedder
    from sertool.training.samplers import length_sorted_batches

    embedder = build_speaker_embedder(speaker_model, flag="--speaker-model").to(device).eval()
    dataset = UtteranceDataset(utterances, to_unit=float)
    embeddings = [None] * len(utterances)
    batches = length_sorted_batches([u.duration_s for u in utterances], max_batch_s=DEFAULT_EVAL_BATCH_S)
    with torch.no_grad(), task(f"speaker embeddings ({len(utterances):,} utterances)") as progress:
        for done, batch_indices in enumerate(batches, start=1):
            batch = collate([dataset[index] for index in batch_indices])
            if batch.skipped:
                raise SertoolError(f"cannot read {batch.skipped[0]}")
            vectors = embedder(batch.waveforms.to(device), batch.sample_mask.to(device)).float().cpu().numpy()
            for index, vector in zip(batch_indices, vectors):
                embeddings[index] = vector
            progress(done, len(batches))
    matrix = np.stack(embeddings).astype(np.float64)
    speakers = [utt.speaker for utt in utterances]
    points, explained = _pca_2d(matrix)
    return SpeakerMap(points, speakers, _fisher_ratio(points, speakers), explained)  # type: ignore[arg-type]


def _pca_2d(matrix: np.ndarray) -> tuple[np.ndarray, float]:
    # Standardise each dimension first: x-vector and log-mel dimensions have very different scales.
    centred = (matrix - matrix.mean(axis=0)) / (matrix.std(axis=0) + 1e-8)
    _, singular, vt = np.linalg.svd(centred, full_matrices=False)
    explained = float((singular[:2] ** 2).sum() / (singular ** 2).sum())
    return centred @ vt[:2].T, explained


def _fisher_ratio(points: np.ndarray, speakers: Sequence[str]) -> float:
    labels = np.array(speakers)
    centre = points.mean(axis=0)
    between = within = 0.0
    for speaker in np.unique(labels):
        group = points[labels == speaker]
        between += len(group) * float(((group.mean(axis=0) - centre) ** 2).sum())
        within += float(((group - group.mean(axis=0)) ** 2).sum())
    return between / within if within > 0 else float("inf")


def plot_speaker_map(result: SpeakerMap, path: str | Path, *, title: str) -> None:
    """Scatter of the 2-D points, one colour per speaker (PNG)."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise missing_package("matplotlib", needed_for="plotting") from None
    from sertool.io import atomic_write

    figure = Figure(figsize=(6.5, 5.5), dpi=100)
    FigureCanvasAgg(figure)
    axis = figure.add_subplot()
    labels = np.array(result.speakers)
    for speaker in dict.fromkeys(result.speakers):
        group = result.points[labels == speaker]
        axis.scatter(group[:, 0], group[:, 1], s=18, label=f"speaker {speaker}")
    axis.set_title(f"{title}\nFisher ratio {result.fisher_ratio:.2f}; PCA keeps {result.explained_variance:.0%}",
                   fontsize=10)
    axis.set_xlabel("PC 1")
    axis.set_ylabel("PC 2")
    axis.legend(fontsize=7, loc="best", ncol=2)
    figure.tight_layout()
    with atomic_write(path, "wb") as handle:
        figure.savefig(handle, format="png")
