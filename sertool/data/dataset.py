"""Utterances as tensors: a map-style dataset and the collate function that pads a batch.

Training crops long clips at random (``max_duration_s``) and may change their speed
(``speed_perturbation``), reproducibly from ``(seed, epoch, index)`` so a resumed run reads the same
clips; evaluation always reads whole utterances as they are.

With cached encoder frames (``frames``: a frozen encoder's hidden states, ``sertool.cache.frames``) an item
carries its frames instead of (or, for a model that also reads the audio, beside) its waveform: the frames of
the whole utterance, or of the crop, cut from the whole utterance's frames at the frame rate.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from sertool.cache.frames import CachedFrames, Frames
from sertool.core.errors import SertoolError
from sertool.data.audio import SAMPLE_RATE, load_audio
from sertool.data.dsp import resample
from sertool.data.packed import PackedUtterances
from sertool.data.records import ATTRIBUTES, GENDERS, Utterance

IGNORE_INDEX = -100  # class target of an unknown gender or speaker: cross-entropy ignores it


@dataclass
class Batch:
    """A padded batch. ``targets`` are on the unit scale (NaN where a label is withheld)."""

    ids: list[str]
    waveforms: torch.Tensor  # [B, S] float32, zero-padded on the right ([B, 0] when only frames are read)
    sample_mask: torch.Tensor  # [B, S] bool, True on real samples
    targets: torch.Tensor  # [B, 3] float32, A, V, D
    gender_ids: torch.Tensor  # [B] long, index into GENDERS or IGNORE_INDEX
    speaker_ids: torch.Tensor  # [B] long, index into the run's speaker list or IGNORE_INDEX
    texts: list[str | None]
    text_embeddings: torch.Tensor | None = None  # [B, E] when the run caches a frozen text encoder
    frames: torch.Tensor | None = None  # [B, T, D] float16 cached encoder frames, zero-padded on the right
    frame_mask: torch.Tensor | None = None  # [B, T] bool, True on real frames
    skipped: list[str] = field(default_factory=list)  # "<id>: <reason>" of items whose audio failed

    def __len__(self) -> int:
        return len(self.ids)

    def to(self, device: torch.device) -> "Batch":
        """The tensors moved to ``device`` (non-blocking where the memory is pinned)."""
        return self._map_tensors(lambda tensor: tensor.to(device, non_blocking=True))

    def pin_memory(self) -> "Batch":
        """The tensors in page-locked memory, so that ``to(cuda)`` copies while the GPU computes.

        A DataLoader with ``pin_memory=True`` calls this on each batch (for a type it does not know, it pins
        nothing, and every non-blocking copy then waits for its transfer).
        """
        return self._map_tensors(lambda tensor: tensor.pin_memory())

    def _map_tensors(self, change: Callable[[torch.Tensor], torch.Tensor]) -> "Batch":
        changed: dict[str, Any] = {name: change(value) if isinstance(value, torch.Tensor) else value
                                   for name, value in vars(self).items()}
        return Batch(**changed)


class UtteranceDataset(torch.utils.data.Dataset):
    """Reads one utterance per index: waveform, unit-scale targets, class ids, transcript.

    Args:
        utterances: the records, in the order the sampler's indices refer to.
        to_unit: maps a rating (1..7) to the model's unit scale (``LabelScaling.to_unit``).
        speakers: speaker label → class index for the speaker task (unknown speakers are ignored).
        text_embeddings: utterance id → cached transcript embedding (frozen text encoder).
        max_duration_s: training crop length; None reads the whole utterance.
        speed_perturbation: x > 0 plays each item at speed 1 - x, 1 or 1 + x (one of the three at random,
            per epoch): resampled from ``sample_rate`` × speed to ``sample_rate``, so pitch and tempo change
            together and the length by 1 / speed (after the crop). 0: as recorded.
        seed: seed of the crops and speeds.
        frames: cached encoder frames of the utterances (whole utterances'); items then carry ``frames``
            (their crop's: its start rounded to a whole frame, ``frames.crop_frames`` long), and their
            waveform only when ``frames.read_waveforms``.

    Audio that fails to load does not raise here (an exception in a loader worker arrives wrapped in a
    traceback): the item becomes ``{"skipped": "<id>: <reason>"}``, ``collate`` lists it in
    ``Batch.skipped``, and the caller applies its policy (training: ``--on-bad-audio``).

    The records are kept packed (``utterances``: a ``PackedUtterances``, numpy columns): the loader's workers
    are forks of this process, and reading records held as Python objects would copy the pages they lie on
    into every worker, an epoch's worth of the training set per worker.
    """

    def __init__(
        self,
        utterances: Sequence[Utterance],
        *,
        to_unit,
        speakers: Mapping[str, int] | None = None,
        text_embeddings: Mapping[str, torch.Tensor] | None = None,
        max_duration_s: float | None = None,
        speed_perturbation: float = 0.0,
        sample_rate: int = SAMPLE_RATE,
        seed: int = 0,
        frames: CachedFrames | None = None,
    ) -> None:
        if frames is not None and speed_perturbation:
            raise ValueError("cached frames cannot follow a speed change")
        self.utterances = PackedUtterances(utterances)
        self._durations_s = self.utterances.durations_s()
        self.to_unit = to_unit
        self.speakers = dict(speakers or {})
        self.text_embeddings = text_embeddings
        self.max_duration_s = max_duration_s
        self.speed_perturbation = speed_perturbation
        self.sample_rate = sample_rate
        self.seed = seed
        self.frames = frames
        self.read_waveforms = frames is None or frames.read_waveforms
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """New crops for a new epoch (the trainer calls this with the sampler's)."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.utterances)

    def __getitem__(self, index: int) -> dict:
        utt = self.utterances[index]
        crop = None
        if self.max_duration_s is not None and utt.duration_s > self.max_duration_s:
            crop = (self._crop_offset_s(index), self.max_duration_s)
        item: dict[str, Any] = {}
        try:
            if self.frames is not None:
                item["frames"] = torch.from_numpy(crop_frames(self.frames.by_id[utt.id], crop,
                                                              frame_rate=self.frames.frame_rate,
                                                              count=self.frames.crop_frames))
            if self.read_waveforms:
                item["waveform"] = load_utterance_audio(utt, sample_rate=self.sample_rate, crop=crop)
        except SertoolError as error:
            return {"skipped": f"{utt.id}: {error}"}
        speed = self.speed(index)
        if speed != 1.0:
            item["waveform"] = resample(item["waveform"], round(self.sample_rate * speed), self.sample_rate)
        values = [getattr(utt, name) for name in ATTRIBUTES]
        targets = [self.to_unit(value) if value is not None else float("nan") for value in values]
        item.update({
            "id": utt.id,
            "targets": torch.tensor(targets, dtype=torch.float32),
            "gender_id": GENDERS.index(utt.gender) if utt.gender in GENDERS else IGNORE_INDEX,
            "speaker_id": self.speakers.get(utt.speaker, IGNORE_INDEX) if utt.speaker is not None else IGNORE_INDEX,
            "text": utt.transcript,
        })
        if self.text_embeddings is not None:
            item["text_embedding"] = self.text_embeddings[utt.id]
        return item

    def speed(self, index: int) -> float:
        """The speed item ``index`` plays at this epoch: 1 - x, 1 or 1 + x (always 1 without perturbation)."""
        if not self.speed_perturbation:
            return 1.0
        # A stream of its own (the trailing 1): the crops stay those of a run without perturbation.
        choice = np.random.default_rng([self.seed, self.epoch, index, 1]).integers(3)
        return 1.0 + (int(choice) - 1) * self.speed_perturbation

    def _crop_offset_s(self, index: int) -> float:
        """Start of a random ``max_duration_s`` window inside the utterance (0 when it fits whole)."""
        duration_s = float(self._durations_s[index])
        if self.max_duration_s is None or duration_s <= self.max_duration_s:
            return 0.0
        rng = np.random.default_rng([self.seed, self.epoch, index])
        return float(rng.uniform(0.0, duration_s - self.max_duration_s))


def load_utterance_audio(utt: Utterance, *, sample_rate: int = SAMPLE_RATE,
                         crop: tuple[float, float] | None = None) -> torch.Tensor:
    """The waveform of ``utt``: its whole file, read to the end, or exactly its window (``span_s``).

    Args:
        utt: the utterance.
        sample_rate: rate of the waveform in Hz.
        crop: ``(offset_s, duration_s)`` inside the utterance, to read only that (a training crop).

    Raises:
        SertoolError: the audio cannot be read (naming the file).
    """
    start_s = utt.span_s[0] if utt.span_s is not None else 0.0
    length_s = utt.duration_s if utt.span_s is not None else None
    if crop is not None:
        start_s, length_s = start_s + crop[0], crop[1]
    return load_audio(utt.audio_path, sample_rate=sample_rate, offset_s=start_s, max_duration_s=length_s)


def crop_frames(frames: Frames, crop: tuple[float, float] | None, *, frame_rate: float,
                count: int | None = None) -> np.ndarray:
    """The frames of an utterance's crop, cut from its whole-utterance frames.

    Args:
        frames: the whole utterance's frames.
        crop: ``(offset_s, duration_s)`` inside the utterance (None: all frames).
        frame_rate: frames per second.
        count: the crop's frames, as the encoder makes of ``duration_s`` of audio (None:
            ``round(duration_s × frame_rate)``).

    Returns:
        ``count`` rows (at least 1, at most all) from ``round(offset_s × frame_rate)``, moved back where the
        crop's last frame would pass the utterance's end; float16.
    """
    if crop is None:
        return frames.read()
    count = min(frames.num_frames, max(1, round(crop[1] * frame_rate) if count is None else count))
    start = min(round(crop[0] * frame_rate), frames.num_frames - count)
    return frames.read(start, start + count)


def _padded(rows: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of different lengths (dim 0) stacked with zeros after each one's end (in their dtype: cached frames
    stay float16, half the bytes to copy to the device), and the mask of real rows."""
    lengths = torch.tensor([len(row) for row in rows], dtype=torch.long)
    longest = int(lengths.max()) if len(rows) else 0
    padded = torch.zeros(len(rows), longest, *(rows[0].shape[1:] if len(rows) else ()),
                         dtype=rows[0].dtype if len(rows) else torch.float32)
    for index, row in enumerate(rows):
        padded[index, : len(row)] = row
    return padded, torch.arange(longest)[None, :] < lengths[:, None]


def collate(items: Sequence[dict]) -> Batch:
    """Pad waveforms (and cached frames) to the longest item; items whose audio failed are listed in
    ``Batch.skipped``."""
    skipped = [item["skipped"] for item in items if "skipped" in item]
    items = [item for item in items if "skipped" not in item]
    waveforms, sample_mask = _padded([item.get("waveform", torch.zeros(0)) for item in items])
    frames, frame_mask = (_padded([item["frames"] for item in items]) if items and "frames" in items[0]
                          else (None, None))
    embeddings = [item["text_embedding"] for item in items if "text_embedding" in item]
    return Batch(
        ids=[item["id"] for item in items],
        waveforms=waveforms,
        sample_mask=sample_mask,
        targets=torch.stack([item["targets"] for item in items]) if items else torch.zeros(0, len(ATTRIBUTES)),
        gender_ids=torch.tensor([item["gender_id"] for item in items], dtype=torch.long),
        speaker_ids=torch.tensor([item["speaker_id"] for item in items], dtype=torch.long),
        texts=[item["text"] for item in items],
        text_embeddings=torch.stack(embeddings) if embeddings and len(embeddings) == len(items) else None,
        frames=frames,
        frame_mask=frame_mask,
        skipped=skipped,
    )
