"""DDP on 2 gloo ranks (CPU) where the ranks' steps could part ways: parameters some rank leaves without a
gradient, a rank without readable data, a NaN gradient on one rank, validations the ranks would judge
apart. Every rank must take the same path, or the job hangs in a collective one rank never enters."""
from __future__ import annotations

import dataclasses
import functools
import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist

from sertool.runtime.runner import ModelPredictions
from sertool.training import loop
from tests.cases import case
from tests.corpus_files import write_learnable_corpus
from tests.ddp_ranks import WORLD_SIZE, assert_ranks_agree, run_ranks
from tests.systems import nan_gradient_loss, small_config
from tests.tiny_speech import save_tiny_wavlm


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return write_learnable_corpus(tmp_path_factory.mktemp("corpus") / "c")


def _watch_layers_and_gradients(records: Path, rank: int) -> None:
    """In a rank: record which encoder layers each training forward ran, and at each optimiser step (when
    the step clips its gradients, after DDP's all-reduce) how far any gradient is from the mean of the
    ranks' own gradients (a rank that did not use a parameter contributes zeros)."""
    layers_run: list[list[int]] = []
    deviations: list[float] = []
    own: dict[str, torch.Tensor] = {}
    real_wrap, real_clip = loop._Run._wrap_ddp, torch.nn.utils.clip_grad_norm_

    def keep_own(name: str, gradient: torch.Tensor) -> None:
        own[name] = own[name] + gradient if name in own else gradient.detach().clone()

    def wrap(self: loop._Run):
        model = self.model
        model.register_forward_pre_hook(lambda module, args: layers_run.append([]) if module.training else None)
        for index, layer in enumerate(model.backbone.model.encoder.layers):
            layer.register_forward_pre_hook(
                lambda module, args, index=index: layers_run[-1].append(index) if module.training else None)
        trainable = [(name, parameter) for name, parameter in model.named_parameters() if parameter.requires_grad]
        for name, parameter in trainable:
            parameter.register_hook(functools.partial(keep_own, name))

        def clip(parameters, max_norm, *args, **kwargs):
            everyone: list = [None] * WORLD_SIZE
            dist.all_gather_object(everyone, own)
            worst = 0.0
            for name, parameter in trainable:
                shares = [ranks_own[name] for ranks_own in everyone if name in ranks_own]
                if not shares:  # no rank used it: no gradient anywhere
                    worst = max(worst, 0.0 if parameter.grad is None else float("inf"))
                    continue
                mean = sum(shares) / WORLD_SIZE
                got = parameter.grad if parameter.grad is not None else torch.zeros_like(mean)
                worst = max(worst, float((got - mean).abs().max()))
            deviations.append(worst)
            own.clear()
            torch.save({"layers_run": layers_run, "deviations": deviations}, records / f"rank{rank}.pt")
            return real_clip(parameters, max_norm, *args, **kwargs)

        torch.nn.utils.clip_grad_norm_ = clip
        return real_wrap(self)

    loop._Run._wrap_ddp = wrap  # type: ignore[method-assign]


@pytest.mark.slow
@case("training", "DDP with LayerDrop on (a fine-tuned WavLM/HuBERT/wav2vec2 with `layer_weighting: last`, no "
      "auxiliary head; was: the second step failed, \"Expected to have finished reduction\")",
      "trains; each rank skips its own layers, every gradient is the mean of the ranks' own (zeros where a "
      "rank skipped), the ranks' weights stay equal")
def test_ddp_trains_a_backbone_that_drops_layers_at_random(corpus, tmp_path):
    config = small_config(corpus, batch_size=2, accum_steps=2)  # 8 utterances a step: 4 steps in 2 epochs
    config.model.backbone = "wavlm"
    config.model.backbone_path = str(save_tiny_wavlm(tmp_path / "wavlm", layerdrop=0.5))
    config.model.layer_weighting = "last"  # keeps the model's LayerDrop
    config.model.aux = ()  # no auxiliary head, which made DDP look for unused parameters before
    records = tmp_path / "records"
    records.mkdir()
    ends = run_ranks(config, tmp_path / "run", prepare=functools.partial(_watch_layers_and_gradients, records))
    assert_ranks_agree(ends)
    assert ends[0]["steps"] == 4 and ends[0]["skipped_steps"] == 0
    watched = [torch.load(records / f"rank{rank}.pt") for rank in range(WORLD_SIZE)]
    forwards = [rank["layers_run"] for rank in watched]
    assert len(forwards[0]) == len(forwards[1]) == 4 * 2  # 2 micro-batches a step
    assert forwards[0] != forwards[1], "the ranks skipped the same layers: the case is not tested"
    assert any(layers == [0] for rank in forwards for layers in rank), "no layer was skipped"
    assert all(len(rank["deviations"]) == 4 and max(rank["deviations"]) < 1e-6 for rank in watched)


def _rank_1_reads_nothing_in_step_2(rank: int) -> None:
    """In a rank: on rank 1, every training clip of the second step (1 micro-batch of 4) fails to decode."""
    if rank != 1:
        return

    class FailingInStep2(loop.UtteranceDataset):
        reads = 0

        def __getitem__(self, index: int) -> dict:
            FailingInStep2.reads += 1
            if 4 < FailingInStep2.reads <= 8:
                return {"skipped": f"{self.utterances[index].id}: audio could not be decoded (simulated)"}
            return super().__getitem__(index)

    loop.UtteranceDataset = FailingInStep2  # type: ignore[misc]  # the training loader's only: not validation's


@pytest.mark.slow
@case("training", "DDP: every clip of one rank's step fails to decode (was: that rank skipped its backward pass "
      "and the job hung in the gradient all-reduce)",
      "every rank skips that step (not counted as non-finite) and trains on; the clips are in `skipped_audio` "
      "whichever rank read them; with `--on-bad-audio fail` every rank stops with the same line")
@pytest.mark.parametrize("on_bad_audio", ["skip", "fail"])
def test_ddp_a_rank_without_readable_audio_skips_the_step_on_every_rank(corpus, tmp_path, on_bad_audio):
    config = small_config(corpus)  # 4 clips a micro-batch, 1 a step per rank: 2 steps an epoch, 2 epochs
    config.data.on_bad_audio = on_bad_audio
    ends = run_ranks(config, tmp_path / "run", prepare=_rank_1_reads_nothing_in_step_2)
    assert_ranks_agree(ends)
    if on_bad_audio == "fail":
        assert ends[0]["error"].startswith("--on-bad-audio fail: cannot read ") and "(simulated)" in ends[0]["error"]
        return
    assert ends[0]["steps"] == 4 and ends[0]["skipped_steps"] == 0
    assert len(ends[0]["skipped_audio"]) == 4 and all("(simulated)" in item for item in ends[0]["skipped_audio"])
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["skipped_audio"] == ends[0]["skipped_audio"]  # written by rank 0, which read them all
    train_records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
                     if json.loads(line)["type"] == "train"]
    assert [record["step"] for record in train_records if record.get("skipped")] == [2]


def _nan_gradient_on_rank_1_in_step_2(rank: int) -> None:
    """In a rank: on rank 1, the second step's gradient is NaN while its loss stays finite."""
    if rank == 1:
        loop.SERLoss.__call__ = nan_gradient_loss({2})  # type: ignore[method-assign]


@pytest.mark.slow
@case("training", "DDP: a NaN gradient under a finite loss on one rank only",
      "every rank skips the step and counts it; the ranks' weights stay equal and finite")
def test_ddp_a_nan_gradient_on_one_rank_skips_the_step_on_every_rank(corpus, tmp_path):
    ends = run_ranks(small_config(corpus), tmp_path / "run", prepare=_nan_gradient_on_rank_1_in_step_2)
    assert all(torch.isfinite(value).all() for end in ends for value in end["state"].values())
    assert_ranks_agree(ends)
    assert "error" not in ends[0] and ends[0]["steps"] == 4 and ends[0]["skipped_steps"] == 1


def _validations_that_differ_per_rank(rank: int) -> None:
    """In a rank: validation predictions that differ between the ranks. Rank 0's are the labels plus noise
    that shrinks at the second validation and then stays (better, then equal: patience 1 stops at the
    third); rank 1's noise grows at every validation (alone, it would stop at the second)."""
    real_predict = loop._Run._predict_valid
    validations = itertools.count(1)

    def predict(self: loop._Run) -> ModelPredictions:
        predictions = real_predict(self)
        count = next(validations)
        draw = min(count, 2) if rank == 0 else count
        noise = np.random.default_rng(draw).normal(size=predictions.emotion_unit.shape)
        labels = self.model.label_scaling.to_unit(np.array([utt.labels() for utt in self.valid_set]))
        spread = 0.2 / draw if rank == 0 else 0.2 * draw
        return dataclasses.replace(predictions, emotion_unit=labels + spread * noise)

    loop._Run._predict_valid = predict  # type: ignore[method-assign]


@pytest.mark.slow
@case("training", "DDP: validations the ranks would judge apart (was: each rank chose its own floor blend and "
      "early-stopping decision; a rank that stopped early left the others waiting)",
      "rank 0 judges (scores, blend, improved) and every rank takes its verdict: equal blends and weights, "
      "the same stop at the same step")
def test_ddp_ranks_take_rank_0s_validation_verdict(corpus, tmp_path):
    config = small_config(corpus, epochs=3, patience=1)  # 2 steps an epoch; validated at steps 0, 2, 4 (and 6)
    config.model.floor_blend = True
    config.data.cache_dir = str(tmp_path / "cache")
    ends = run_ranks(config, tmp_path / "run", prepare=_validations_that_differ_per_rank)
    assert_ranks_agree(ends)
    assert (ends[0]["stopped"], ends[0]["steps"]) == ("early stopping", 4)
    assert [record["improved"] for record in ends[0]["history"]] == [True, True, False]
    blend = ends[0]["state"]["floor_blend.blend"].tolist()
    assert blend == list(ends[0]["history"][-1]["floor_blend"].values())
