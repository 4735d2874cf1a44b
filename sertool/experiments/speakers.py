"""Figure 2 of the paper: do a speaker extractor's embeddings separate this corpus's speakers?

Embeddings of ``per_speaker`` utterances from each of ``num_speakers`` speakers, projected to 2-D with PCA
and plotted by speaker. The separation is also given as a number, the Fisher ratio of the 2-D points
(between-speaker over within-speaker variance): well above 1 means the extractor tells the speakers apart.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import numpy as np
import torch

from sertool.core.config import DEFAULT_EVAL_BATCH_S
from sertool.core.errors import SertoolError, missing_package
from sertool.core.progress import task
from sertool.data.corpus import open_corpus
from sertool.data.records import Utterance
from sertool.data.selection import choose_utterances
from sertool.experiments.options import SpeakersOptions
from sertool.guards.outputs import OutputPlan


@dataclass
class SpeakerFigure:
    """What `sertool data speakers` drew: the map, from how many utterances, and where it went."""

    map: SpeakerMap
    num_utterances: int
    path: Path


def speaker_figure(options: SpeakersOptions) -> SpeakerFigure:
    """`sertool data speakers`: draw ``options.per_speaker`` utterances of ``options.num_speakers`` speakers of
    ``options.split`` of ``options.corpus`` (``choose_utterances``, by ``options.speaker_choice`` and
    ``options.seed``), map them with ``options.speaker_model`` (``speaker_map``) and write the figure to
    ``options.out``, which is declared before any of that.

    Raises:
        SertoolError: ``out`` may not be written, too few speakers or utterances, or an unloadable model.
    """
    outputs = OutputPlan(force=options.force)
    path = outputs.file(options.out, flag="--out")
    assert path is not None, "--out is required"
    utterances = choose_utterances(open_corpus(options.corpus).split(options.split), num_speakers=options.num_speakers,
                                   per_speaker=options.per_speaker, seed=options.seed, speakers=options.speaker_choice)
    result = speaker_map(utterances, options.speaker_model)
    with outputs.writing(path, "wb") as handle:
        plot_speaker_map(result, handle, title=f"{options.speaker_model} on {len(utterances)} utterances of "
                                               f"{options.split}")
    return SpeakerFigure(result, len(utterances), path)


@dataclass
class SpeakerMap:
    """2-D points per utterance with their speakers, and how well they separate."""

    points: np.ndarray  # [N, 2]
    speakers: list[str]
    fisher_ratio: float
    explained_variance: float  # share of the embeddings' variance the two components keep


def speaker_map(utterances: Sequence[Utterance], speaker_model: str, *, device: str = "cpu") -> SpeakerMap:
    """Embed ``utterances`` with ``speaker_model`` (hub id, folder, or ``log-mel-stats``) and project to 2-D."""
    from sertool.data.dataset import UtteranceDataset, collate
    from sertool.models.speaker_embedding import build_speaker_embedder
    from sertool.runtime.batching import length_sorted_batches

    embedder = build_speaker_embedder(speaker_model, flag="--speaker-model").to(device).eval()
    dataset = UtteranceDataset(utterances, to_unit=float)
    matrix = np.zeros((len(utterances), embedder.output_dim))
    batches = length_sorted_batches([u.duration_s for u in utterances], max_batch_s=DEFAULT_EVAL_BATCH_S)
    with torch.no_grad(), task(f"speaker embeddings ({len(utterances):,} utterances)") as progress:
        for done, batch_indices in enumerate(batches, start=1):
            batch = collate([dataset[index] for index in batch_indices])
            if batch.skipped:
                raise SertoolError(f"cannot read {batch.skipped[0]}")
            vectors = embedder(batch.waveforms.to(device), batch.sample_mask.to(device)).float().cpu().numpy()
            for index, vector in zip(batch_indices, vectors, strict=True):
                matrix[index] = vector
            progress(done, len(batches))
    speakers = [utt.speaker for utt in utterances]
    points, explained = _pca_2d(matrix)
    # The ignore below: the figure's utterances come from choose_utterances, which keeps those with a speaker.
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


def plot_speaker_map(result: SpeakerMap, handle: IO[bytes], *, title: str) -> None:
    """Scatter of the 2-D points, one colour per speaker, as a PNG written to ``handle``."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise missing_package("matplotlib", needed_for="plotting") from None
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
    figure.savefig(handle, format="png")
