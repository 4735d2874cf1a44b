"""The invariants the GPU paths rely on, across the configuration space instead of at one point.

Factors: backbone (fbank; a tiny WavLM, with LayerDrop where the invariant allows it; a tiny Whisper) ×
auxiliary tasks (none, gender, speaker) × precision (fp32, bf16, fp16: CPU autocast) × accumulation (1, 2)
× DDP (1 process, 2 gloo ranks). Each invariant runs over the factors that can change it:

- **accumulation = one big batch** (k micro-batches of b items, one step = one batch of k·b under a loss that is
  a mean over items): the whole product of backbone × auxiliary tasks × precision.
- **padded = one at a time** (inference: a length-sorted padded batch predicts what each clip alone does):
  backbone × precision.
- **DDP = one process** (2 ranks × accumulation 1 = 1 process × accumulation 2): a cover of backbone ×
  auxiliary tasks × precision in which every pair of values appears (slow: two processes per case).
- **resume = uninterrupted** (a run stopped mid-epoch and resumed ends bit for bit where the uninterrupted one
  does): a cover of backbone (LayerDrop included) × auxiliary tasks × precision × accumulation (slow).
- **fp16/bf16 ≈ fp32**: tests/test_precision.py, every backbone in both half precisions.

LayerDrop is a random draw per forward pass: two runs that draw differently (one big batch against two
micro-batches, one process against two) skip different layers, so those invariants use the WavLM without it;
resume draws the same layers (the random states are restored) and keeps it. The slow corners are marked
``slow`` (DDP, resume, and half precision on a pretrained backbone): ``make test`` (CI) runs them, ``make
test-quick`` leaves them out.
"""
from __future__ import annotations

import itertools
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from sertool.core.config import Config, ModelConfig
from sertool.data.corpus import open_corpus
from sertool.data.dataset import collate
from sertool.models.ser_model import SERModel
from sertool.runtime.runner import run_model
from sertool.store.checkpoints import load_checkpoint
from sertool.training import loop
from sertool.training.loop import _Run, train
from tests.corpus_files import write_learnable_corpus
from tests.ddp_ranks import run_ranks
from tests.systems import InterruptAt, small_config
from tests.tiny_speech import save_tiny_wavlm, save_tiny_whisper

BACKBONES = ("fbank", "wavlm", "whisper")
AUX = ((), ("gender",), ("speaker",))
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
# How far a result computed two ways may differ: fp32 to rounding, half precision to its own rounding of the
# same sums taken in another order (docs/training.md, "Mixed precision").
UPDATE_TOLERANCE = {"fp32": 1e-4, "bf16": 3e-2, "fp16": 1e-2}  # of the largest update of the step
RATING_TOLERANCE = {"fp32": 1e-4, "bf16": 0.05, "fp16": 0.01}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return write_learnable_corpus(tmp_path_factory.mktemp("invariants") / "corpus",
                                  per_split={"Train": 16, "Development": 8})


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("invariant-models")
    # "wavlm" draws nothing at random while it trains (no dropout, LayerDrop or SpecAugment time masks), so that
    # two ways of computing one step can be compared; "wavlm-layerdrop" skips half its layers at random.
    deterministic = dict(hidden_dropout=0.0, attention_dropout=0.0, activation_dropout=0.0, feat_proj_dropout=0.0,
                         layerdrop=0.0, mask_time_prob=0.0)
    return {"wavlm": save_tiny_wavlm(root / "wavlm", feat_extract_norm="layer", do_stable_layer_norm=True,
                                     **deterministic),
            "wavlm-layerdrop": save_tiny_wavlm(root / "wavlm-layerdrop", feat_extract_norm="layer",
                                               do_stable_layer_norm=True, layerdrop=0.5),
            "whisper": save_tiny_whisper(root / "whisper")}


def system(corpus: Path, models: dict[str, Path], backbone: str, aux: tuple[str, ...], precision: str = "fp32",
           **train_overrides) -> Config:
    """The tiny fbank system of tests/systems.py with another backbone, auxiliary tasks and precision."""
    config = small_config(corpus, **train_overrides)
    name = backbone.split("-")[0]
    config.model = replace(config.model, backbone=name, aux=aux, backbone_path=str(models[backbone])
                           if backbone != "fbank" else None, layer_weighting="last" if "layerdrop" in backbone
                           else config.model.layer_weighting)
    config.train.amp = {"fp32": "off", "bf16": "bf16", "fp16": "off"}[precision]  # fp16: set on the run (CPU)
    return config


# ---- accumulation = one big batch -------------------------------------------------------------------------------

def _mean_loss(output, targets, *, gender_ids=None, speaker_ids=None):
    """A loss that is a mean over items (so k micro-batches of b equal one batch of k·b), with every head."""
    loss = ((output.emotion.float() - targets) ** 2).mean()
    if output.gender_logits is not None:
        loss = loss + torch.nn.functional.cross_entropy(output.gender_logits.float(), gender_ids)
    if output.speaker_cosine is not None:
        loss = loss + torch.nn.functional.cross_entropy(30 * output.speaker_cosine.float(), speaker_ids)
    return loss, {"total": loss.detach()}


def _cases(*, aux: bool) -> list:
    """Every backbone × (auxiliary tasks ×) precision. Half precision on a pretrained backbone (CPU autocast
    of a transformer) is the slow corner: marked ``slow``, so ``make test-quick`` keeps every backbone in fp32
    and every precision on fbank, and ``make test`` runs the whole product."""
    cases = []
    for backbone, tasks, precision in itertools.product(BACKBONES, AUX if aux else [()], PRECISIONS):
        slow = backbone != "fbank" and precision != "fp32"
        values = (backbone, tasks, precision) if aux else (backbone, precision)
        ids = [backbone, *(["+".join(tasks) or "no-aux"] if aux else []), precision]
        cases.append(pytest.param(*values, id="-".join(ids), marks=[pytest.mark.slow] if slow else []))
    return cases


@pytest.mark.parametrize(("backbone", "aux", "precision"), _cases(aux=True))
def test_accumulated_micro_batches_equal_one_big_batch(corpus, models, tmp_path, backbone, aux, precision):
    """The step's update, compared through SGD at rate 1 (the update is the gradient): AdamW's first update is
    about lr · sign(gradient), which a gradient of 1e-9 either side of 0 flips, whatever the precision."""
    runs = []
    for name in ("accumulated", "single"):
        run = _Run(system(corpus, models, backbone, aux, precision, grad_clip_norm=0.0), tmp_path / name,
                   resume=False, argv=(), context=loop.Distributed(), reporter=loop.Reporter())
        run.loss_fn = _mean_loss
        run.amp_dtype = PRECISIONS[precision]
        run.optimizer = torch.optim.SGD([{"params": group["params"], "lr": 1.0, "base_lr": 1.0}
                                         for group in run.optimizer.param_groups])
        if precision == "fp16":  # as training does with fp16 on a GPU: gradients scaled, so none underflows
            run.scaler = torch.amp.GradScaler("cpu")
        runs.append(run)
    before = {name: value.detach().clone() for name, value in runs[0].model.named_parameters()}
    items = [runs[0].dataset[index] for index in range(8)]
    _step_until_applied(runs[0], [collate(items[:4]), collate(items[4:])], before)
    _step_until_applied(runs[1], [collate(items)], before)
    updates = [{name: value.detach() - before[name] for name, value in run.model.named_parameters()} for run in runs]
    scale = max(update.abs().max().item() for update in updates[1].values())
    tolerance = UPDATE_TOLERANCE[precision]
    for name, update in updates[0].items():
        torch.testing.assert_close(update, updates[1][name], atol=tolerance * scale, rtol=tolerance,
                                   msg=lambda text, name=name: f"{name}: {text}")


def _step_until_applied(run: _Run, group: list, before: dict[str, torch.Tensor], *, tries: int = 24) -> None:
    """``run._optimizer_step(group)`` until it changes the weights: fp16's GradScaler skips a step whose scaled
    gradients overflow and halves its scale, as it does in the first steps of a GPU run, until they fit."""
    for _ in range(tries):
        run._optimizer_step(group)
        if any(not torch.equal(value, before[name]) for name, value in run.model.named_parameters()):
            return
    raise AssertionError(f"no step changed the weights in {tries} tries")


# ---- padded = one at a time -------------------------------------------------------------------------------------

@pytest.mark.parametrize(("backbone", "precision"), _cases(aux=False))
def test_a_padded_batch_predicts_what_each_clip_alone_does(corpus, models, backbone, precision):
    torch.manual_seed(0)
    config = ModelConfig(backbone=backbone, backbone_path=str(models[backbone]) if backbone != "fbank" else None,
                         fbank_dim=32, head_hidden_dim=16)
    model = SERModel(config).eval()
    utterances = open_corpus(corpus).split("Train")  # clips of 0.6 to 1.6 s
    dtype = PRECISIONS[precision]
    batched = run_model(model, utterances, device=torch.device("cpu"), amp_dtype=dtype).emotion_unit
    alone = run_model(model, utterances, device=torch.device("cpu"), amp_dtype=dtype, max_batch_s=1e-6).emotion_unit
    ratings = model.label_scaling.ratings
    np.testing.assert_allclose(ratings(batched), ratings(alone), atol=RATING_TOLERANCE[precision], rtol=0)


# ---- DDP = one process -----------------------------------------------------------------------------------------

def _pairwise_cover() -> list[tuple[str, tuple[str, ...], str]]:
    """Cases in which every pair of (backbone, auxiliary tasks, precision) values appears at least once."""
    factors = [BACKBONES, AUX, ("fp32", "bf16")]
    pairs = {(i, a, j, b) for i, j in itertools.combinations(range(3), 2) for a in factors[i] for b in factors[j]}
    cases = []
    for candidate in itertools.product(*factors):
        covered = {(i, candidate[i], j, candidate[j]) for i, j in itertools.combinations(range(3), 2)}
        if covered & pairs:
            cases.append(candidate)
            pairs -= covered
    return cases


@pytest.mark.slow
@pytest.mark.parametrize(("backbone", "aux", "precision"), _pairwise_cover(),
                         ids=lambda value: "+".join(value) if isinstance(value, tuple) else value)
def test_two_ddp_ranks_equal_one_process_with_the_same_effective_batch(corpus, models, tmp_path, backbone, aux,
                                                                        precision):
    single = train(system(corpus, models, backbone, aux, precision, accum_steps=2, epochs=1), tmp_path / "single")
    ends = run_ranks(system(corpus, models, backbone, aux, precision, accum_steps=1, epochs=1), tmp_path / "ddp")
    expected = load_checkpoint(tmp_path / "single", name="last.pt")["model_state"]
    for end in ends:
        assert end["steps"] == single.steps
        if precision == "fp32":
            for name, value in expected.items():
                torch.testing.assert_close(end["state"][name], value, atol=1e-5, rtol=1e-5, msg=name)
        else:
            _assert_close_after_adamw(end["state"], expected, steps=single.steps, lr=small_config(corpus).train.lr_heads)


def _assert_close_after_adamw(actual: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], *, steps: int,
                              lr: float) -> None:
    """Weights trained two ways in half precision: AdamW moves a weight by about lr · sign(gradient) a step, and a
    gradient within rounding of 0 may take either sign, so a weight may differ by up to 2 · lr a step; but only
    such weights, a small share."""
    differences = torch.cat([(actual[name].float() - value.float()).abs().flatten()
                             for name, value in expected.items() if value.is_floating_point()])
    assert differences.max().item() <= 2 * lr * steps + 1e-6
    assert (differences > 1e-4).float().mean().item() <= 0.05


# ---- resume = uninterrupted -------------------------------------------------------------------------------------

RESUME_CASES = [  # backbone, aux, precision, accumulation: every value of each factor, LayerDrop included
    ("fbank", ("speaker",), "bf16", 2),
    ("wavlm-layerdrop", (), "fp32", 2),
    ("wavlm-layerdrop", ("gender",), "bf16", 1),
    ("whisper", ("gender",), "fp32", 1),
    ("whisper", ("speaker",), "bf16", 2),
]


@pytest.mark.slow
@pytest.mark.parametrize(("backbone", "aux", "precision", "accum_steps"), RESUME_CASES,
                         ids=["-".join([backbone, "+".join(aux) or "no-aux", precision, f"accum{accum}"])
                              for backbone, aux, precision, accum in RESUME_CASES])
def test_a_resumed_run_ends_where_the_uninterrupted_one_does(corpus, models, tmp_path, backbone, aux, precision,
                                                             accum_steps):
    config = system(corpus, models, backbone, aux, precision, accum_steps=accum_steps, batch_size=2, epochs=2,
                    checkpoint_every_steps=1)
    config.model = replace(config.model, head_dropout=0.3)  # a random draw every step, as LayerDrop's
    straight = train(config, tmp_path / "straight")
    stop_step = straight.steps // 2 + 1  # mid-way, inside an epoch
    with pytest.raises(KeyboardInterrupt):
        train(config, tmp_path / "resumed", reporter=InterruptAt(stop_step))
    resumed = train(Config(), tmp_path / "resumed", resume=True)
    assert (resumed.steps, resumed.history) == (straight.steps, straight.history)
    first = load_checkpoint(tmp_path / "straight", name="last.pt")["model_state"]
    second = load_checkpoint(tmp_path / "resumed", name="last.pt")["model_state"]
    assert first.keys() == second.keys() and all(torch.equal(first[key], second[key]) for key in first)
