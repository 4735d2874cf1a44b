"""LoRA on the frozen encoders: a rank per encoder, the placement, alpha, the adapters' learning rate, refusals.

The speech encoder's adapters come from ``--lora-rank`` and ``--lora-placement``, the text encoder's from
``--text-lora-rank`` (by default ``--lora-rank``, as before the two were separate). Every LoRA option that
would adapt nothing is refused, whatever the combination.
"""
from __future__ import annotations

import copy
import dataclasses
import itertools
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from sertool.core.config import Config, ModelConfig, TrainConfig
from sertool.core.errors import SertoolError
from sertool.models.backbones import build_backbone
from sertool.models.lora import LoRALinear
from sertool.models.released import convert_released_state, released_model_config
from sertool.models.released import released_arguments as checked_arguments
from sertool.models.ser_model import SERModel
from sertool.training.optim import build_optimizer, load_optimizer_state
from tests.cases import case
from tests.released_layout import (
    LORA_RANK,
    reference_predictions,
    released_arguments,
    released_state,
    save_backbone_config,
    speech_like,
)
from tests.tiny_speech import NUM_LAYERS, save_tiny_hubert, save_tiny_wav2vec2, save_tiny_wavlm, save_tiny_whisper
from tests.tiny_text import save_tiny_text_encoder

# transformers' WavLM attention passes torch a bool padding mask with a float position bias.
pytestmark = pytest.mark.filterwarnings("ignore:Support for mismatched key_padding_mask:UserWarning")

SIZES = dict(fbank_dim=16, head_hidden_dim=8, head_dropout=0.0)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny_lora")
    return {"whisper": save_tiny_whisper(root / "whisper"), "wavlm": save_tiny_wavlm(root / "wavlm"),
            "hubert": save_tiny_hubert(root / "hubert"), "wav2vec2": save_tiny_wav2vec2(root / "wav2vec2"),
            "text": save_tiny_text_encoder(root / "text", family="roberta"),
            "wavlm5": save_tiny_wavlm(root / "wavlm5", num_hidden_layers=5),
            "whisper4": save_tiny_whisper(root / "whisper4", encoder_layers=4)}


def model_config(tiny: dict[str, Path], backbone: str, *, path: str | None = None, **fields) -> ModelConfig:
    location = str(tiny[path or backbone]) if (path or backbone) in tiny else None
    text = {"text_model": str(tiny["text"])} if fields.get("text") else {}
    return ModelConfig(backbone=backbone, backbone_path=location, **{**SIZES, **text, **fields})


def adapters(module: torch.nn.Module) -> dict[str, LoRALinear]:
    return {name: child for name, child in module.named_modules() if isinstance(child, LoRALinear)}


def adapter_parameters(wrapped: dict[str, LoRALinear]) -> int:
    """What rank-r adapters on these linear layers hold, from the layers' shapes alone: r · (in + out) each."""
    return sum(layer.lora_a.shape[0] * (layer.base.in_features + layer.base.out_features) for layer in wrapped.values())


# ---- a rank per encoder ----

@pytest.mark.parametrize("backbone, frozen, lora_rank, text_lora_rank, speech, text", [
    ("whisper", None, 2, None, 2, 2),   # --lora-rank alone: both encoders, as it always meant
    ("whisper", None, 2, 0, 2, 0),      # the text encoder frozen (its embeddings cached)
    ("whisper", None, 0, 3, 0, 3),      # the text encoder only
    ("whisper", None, 2, 5, 2, 5),      # a rank each
    ("wavlm", True, 4, 1, 4, 1),
    ("wavlm", None, 2, None, 0, 2),     # a fine-tuned WavLM: --lora-rank alone goes to the text encoder (as before)
    ("wavlm", None, 0, 2, 0, 2),
])
def test_each_encoder_gets_adapters_only_where_its_rank_asks(tiny, backbone, frozen, lora_rank, text_lora_rank,
                                                             speech, text):
    config = model_config(tiny, backbone, freeze_backbone=frozen, text=True, lora_rank=lora_rank,
                          text_lora_rank=text_lora_rank)
    Config(model=config).check()
    model = SERModel(config)
    assert model.text_encoder is not None
    in_speech, in_text = adapters(model.backbone), adapters(model.text_encoder)
    assert {layer.lora_a.shape[0] for layer in in_speech.values()} == ({speech} if speech else set())
    assert {layer.lora_a.shape[0] for layer in in_text.values()} == ({text} if text else set())
    if speech:  # the backbone's default placement: Whisper's query and value, WavLM's feed-forward, in every layer
        names = ("q_proj", "v_proj") if backbone == "whisper" else ("intermediate_dense", "output_dense")
        assert sorted(name.rsplit(".", 1)[-1] for name in in_speech) == sorted(names * NUM_LAYERS)
    if text:
        assert sorted(name.rsplit(".", 1)[-1] for name in in_text) == sorted(("query", "value") * NUM_LAYERS)
    # Exactly the adapters train inside the encoders, and nothing else does.
    trained = {name for name, parameter in model.named_parameters() if parameter.requires_grad}
    lora = {name for name in trained if name.endswith((".lora_a", ".lora_b"))}
    assert sum(parameter.numel() for name, parameter in model.named_parameters() if name in lora) == \
        adapter_parameters(in_speech) + adapter_parameters(in_text)
    assert model.needs_texts == bool(text)  # a frozen text encoder's embeddings are cached, an adapted one's not


def _accepted(backbone: str, frozen: bool, text: bool, lora_rank: int, text_lora_rank: int | None) -> bool:
    """When a LoRA combination adapts something with every rank it gives (written out independently)."""
    if text_lora_rank and not text:
        return False
    if lora_rank and not frozen:  # only the text encoder can take it: with --text, and no rank of its own
        return text and text_lora_rank is None
    return True


@case("training", "a LoRA rank that would adapt nothing, in every combination of backbone (fine-tuned, frozen, "
      "from scratch), --text, --lora-rank and --text-lora-rank",
      "refused in one line naming the option, before training; never ignored")
@pytest.mark.parametrize("backbone, frozen", [("wavlm", False), ("wavlm", True), ("whisper", True), ("fbank", False)])
def test_no_combination_of_ranks_is_silently_ignored(tiny, backbone, frozen):
    """Every combination of backbone (fine-tuned, frozen, from scratch), --text, --lora-rank and --text-lora-rank
    is refused in one line exactly when a rank it gives would adapt nothing; otherwise every rank given shows."""
    for text, lora_rank, text_lora_rank in itertools.product((False, True), (0, 2), (None, 0, 3)):
        config = model_config(tiny, backbone, freeze_backbone=frozen or None, text=text, lora_rank=lora_rank,
                              text_lora_rank=text_lora_rank)
        case = f"{backbone} frozen={frozen} text={text} lora_rank={lora_rank} text_lora_rank={text_lora_rank}"
        try:
            Config(model=config).check()
            model = SERModel(config)
        except SertoolError as error:
            assert not _accepted(backbone, frozen, text, lora_rank, text_lora_rank), f"{case}: {error}"
            assert "\n" not in str(error) and "rank" in str(error), case
            continue
        assert _accepted(backbone, frozen, text, lora_rank, text_lora_rank), f"{case}: accepted"
        speech_ranks = {layer.lora_a.shape[0] for layer in adapters(model.backbone).values()}
        text_ranks = {layer.lora_a.shape[0] for layer in adapters(model.text_encoder or torch.nn.Module()).values()}
        assert speech_ranks == ({lora_rank} if lora_rank and frozen else set()), case
        text_rank = (lora_rank if text_lora_rank is None else text_lora_rank) if text else 0
        assert text_ranks == ({text_rank} if text_rank else set()), case


@pytest.mark.parametrize("fields, message", [
    (dict(backbone="wavlm", lora_rank=4), r"^--lora-rank 4: LoRA adapts frozen encoders, and there is none"),
    (dict(backbone="wavlm", lora_rank=4, text=True, text_lora_rank=2),
     r"^--lora-rank 4: LoRA adapts a frozen speech encoder, and --backbone wavlm is fine-tuned; add "
     r"--freeze-backbone .*--text-lora-rank 2 is the text encoder's"),
    (dict(backbone="wavlm", lora_rank=4, text=True, lora_placement="release"),
     r"^--lora-placement release: places the speech encoder's adapters, and --backbone wavlm is fine-tuned"),
    (dict(backbone="fbank", lora_rank=2, text=True, text_lora_rank=0), r"^--lora-rank 2: .*trains from scratch"),
    (dict(backbone="whisper", text_lora_rank=2), r"^--text-lora-rank 2 adapts the text encoder, and there is none"),
    (dict(backbone="whisper", lora_placement="ffn"), r"^--lora-placement ffn places .*--lora-rank is 0"),
    (dict(backbone="wavlm", freeze_backbone=True, lora_rank=2, lora_placement="qv"),
     r"^--lora-placement qv: wavlm's attention passes its query and value weights to torch directly"),
])
def test_lora_options_that_would_adapt_nothing_are_refused_in_one_line(tiny, fields, message):
    config = model_config(tiny, **fields)
    with pytest.raises(SertoolError, match=message):
        Config(model=config).check()
        SERModel(config)


def test_lr_lora_without_adapters_is_refused_before_anything_is_built():
    with pytest.raises(SertoolError, match=r"^--lr-lora 0\.001: there are no LoRA adapters to train"):
        Config(model=ModelConfig(backbone="whisper", text=True, text_lora_rank=0),
               train=TrainConfig(lr_lora=1e-3)).check()
    Config(model=ModelConfig(backbone="whisper", lora_rank=2), train=TrainConfig(lr_lora=1e-3)).check()


# ---- the placement and alpha ----

@pytest.mark.parametrize("backbone, path, expected", [
    # the layers above half: 3 and 4 of 5, 3 of 4 (13-23 of WavLM-Large's 24, 17-31 of Whisper-Large's 32)
    ("wavlm", "wavlm5", {f"model.encoder.layers.{index}.feed_forward.{name}" for index in (3, 4)
                         for name in ("intermediate_dense", "output_dense")}),
    ("whisper", "whisper4", {f"encoder.layers.3.{name}" for name in ("fc1", "fc2")}),
])
def test_the_release_placement_adapts_the_feed_forward_of_the_layers_above_half_with_alpha_one(
        tiny, backbone, path, expected):
    backbone_module = build_backbone(model_config(tiny, backbone, path=path, freeze_backbone=True, lora_rank=3,
                                                  lora_placement="release"))
    wrapped = adapters(backbone_module)
    assert set(wrapped) == expected
    _check_update(wrapped, alpha=1.0, rank=3)
    # --lora-alpha still sets it.
    scaled = build_backbone(model_config(tiny, backbone, path=path, freeze_backbone=True, lora_rank=3,
                                         lora_placement="release", lora_alpha=6.0))
    _check_update(adapters(scaled), alpha=6.0, rank=3)


@pytest.mark.parametrize("backbone, placement, names, alpha", [
    ("whisper", "qv", ("q_proj", "v_proj"), 16.0),          # Whisper's default, alpha's default
    ("whisper", "ffn", ("fc1", "fc2"), 16.0),
    ("wavlm", "ffn", ("intermediate_dense", "output_dense"), 16.0),
    ("hubert", "qv", ("q_proj", "v_proj"), 16.0),           # HuBERT's and wav2vec2's attention can be wrapped
    ("wav2vec2", "qv", ("q_proj", "v_proj"), 8.0),
])
def test_each_placement_wraps_its_linears_in_every_layer(tiny, backbone, placement, names, alpha):
    fields = dict(lora_alpha=alpha) if alpha != 16.0 else {}
    module = build_backbone(model_config(tiny, backbone, freeze_backbone=True, lora_rank=2, lora_placement=placement,
                                         **fields))
    wrapped = adapters(module)
    assert sorted(name.rsplit(".", 1)[-1] for name in wrapped) == sorted(names * NUM_LAYERS)
    assert sorted({name.split("layers.")[1].split(".")[0] for name in wrapped}) == [str(i) for i in range(NUM_LAYERS)]
    _check_update(wrapped, alpha=alpha, rank=2)
    # The adapters run: a non-zero update changes the frames (a wrapped linear that is never called would not).
    waveforms = torch.from_numpy(speech_like(8_000, seed=1))[None]
    mask = torch.ones_like(waveforms, dtype=torch.bool)
    module.eval()
    with torch.no_grad():
        before = module(waveforms, mask)[0]
        for layer in wrapped.values():
            layer.lora_b.normal_()
        after = module(waveforms, mask)[0]
    assert not torch.allclose(before, after)


def _check_update(wrapped: dict[str, LoRALinear], *, alpha: float, rank: int) -> None:
    """Each LoRA layer's output equals base + (alpha / rank) · B · A · x, computed here from its tensors."""
    generator = torch.Generator().manual_seed(0)
    for name, layer in wrapped.items():
        assert layer.lora_a.shape[0] == rank, name
        with torch.no_grad():
            layer.lora_b.copy_(torch.randn(layer.lora_b.shape, generator=generator))
            x = torch.randn(3, 5, layer.base.in_features, generator=generator)
            expected = F.linear(x, layer.base.weight, layer.base.bias) + (alpha / rank) * F.linear(
                F.linear(x, layer.lora_a), layer.lora_b)
            torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-5)
            update = layer(x) - F.linear(x, layer.base.weight, layer.base.bias)
            assert update.abs().max() > 1e-3  # the update is there, at that scale


@pytest.mark.parametrize("kind", ["wavlm", "whisper"])
def test_the_release_placement_holding_their_adapters_computes_their_forward(kind, tmp_path):
    """A frozen encoder with --lora-placement release and the rank of their config.json, given the adapters of a
    model in the authors' released layout unmerged, predicts what their forward (loralib's, computed in the
    test) predicts: the same layers, the same linears, the same scale (alpha 1)."""
    backbone_dir = save_backbone_config(kind, tmp_path / "backbone")
    arguments = released_arguments(kind)
    state = released_state(kind, arguments)
    config = dataclasses.replace(released_model_config(checked_arguments(arguments, source="test")),
                                 backbone_path=str(backbone_dir), freeze_backbone=True, lora_rank=LORA_RANK,
                                 lora_placement="release")
    model = SERModel(config, backbone_weights="stored").eval()
    # Their weights with B = 0 merge nothing: the plain weights, under sertool's names.
    plain = {key: torch.zeros_like(value) if key.endswith(".lora_B") else value for key, value in state.items()}
    ours, _ = convert_released_state(arguments, plain, plain.__getitem__, source="test")
    theirs = sorted(key.removesuffix(".lora_A") for key in state if key.endswith(".lora_A"))
    wrapped = sorted(adapters(model))
    assert len(wrapped) == len(theirs) > 0
    prefix = "backbone.model." if kind == "wavlm" else "backbone."
    for their_name, our_name in zip(theirs, wrapped, strict=True):
        assert our_name == prefix + their_name.removeprefix("backbone_model.")
        for part in ("weight", "bias"):
            ours[f"{our_name}.base.{part}"] = ours.pop(f"{our_name}.{part}")
        ours[f"{our_name}.lora_a"], ours[f"{our_name}.lora_b"] = state[f"{their_name}.lora_A"], state[f"{their_name}.lora_B"]
    model.load_state_dict(ours, strict=True)
    waveforms = [speech_like(length, seed=index) for index, length in enumerate((16_000, 11_000))]
    with torch.no_grad():
        values = np.stack([(1.0 + 6.0 * model(torch.from_numpy(waveform)[None],
                                              torch.ones(1, len(waveform), dtype=torch.bool)).emotion[0]).numpy()
                           for waveform in waveforms])
    expected, _ = reference_predictions(kind, arguments, state, backbone_dir, waveforms)
    np.testing.assert_allclose(values, expected, atol=1e-4, rtol=0)


# ---- the adapters' learning rate ----

def test_the_adapters_train_in_their_own_group_at_lr_lora(tiny):
    model = SERModel(model_config(tiny, "whisper", text=True, lora_rank=2, text_lora_rank=3))
    lora = {id(parameter) for name, parameter in model.named_parameters() if name.endswith((".lora_a", ".lora_b"))}
    optimizer = build_optimizer(model.parameter_groups(), TrainConfig(lr_backbone=1e-5, lr_heads=2e-4, lr_lora=3e-3))
    groups = {group["name"]: group for group in optimizer.param_groups}
    assert set(groups) == {"lora", "heads"}  # a frozen Whisper: nothing else trains inside the encoders
    assert {id(parameter) for parameter in groups["lora"]["params"]} == lora
    assert groups["lora"]["lr"] == groups["lora"]["base_lr"] == 3e-3 and groups["heads"]["lr"] == 2e-4
    # Not given, their rate is --lr-backbone's, what they trained at inside the backbone group before.
    default = build_optimizer(model.parameter_groups(), TrainConfig(lr_backbone=1e-5))
    assert {group["name"]: group["lr"] for group in default.param_groups}["lora"] == 1e-5


@case("training", "`--resume` of a `last.pt` written before `--lr-lora`, its LoRA adapters in the backbone group",
      "resumes with every parameter's optimiser state; the next step is the one the old grouping takes")
def test_a_state_saved_with_the_adapters_in_the_backbone_group_continues_exactly():
    """A last.pt from before the adapters had a group of their own (they were the tail of "backbone") resumes:
    the moments of every parameter are kept, and the next step is the one the old grouping would take."""
    torch.manual_seed(0)
    encoder, adapter, head = torch.nn.Linear(4, 4), torch.nn.Linear(4, 2, bias=False), torch.nn.Linear(2, 1)
    config = TrainConfig(lr_backbone=1e-3, lr_heads=1e-2)
    old = build_optimizer({"backbone": [*encoder.parameters(), *adapter.parameters()],
                           "heads": list(head.parameters())}, config)
    inputs = torch.randn(8, 4)

    def step(optimizer: torch.optim.Optimizer) -> None:
        optimizer.zero_grad()
        head(adapter(encoder(inputs))).square().mean().backward()
        optimizer.step()

    step(old)
    saved = copy.deepcopy(old.state_dict())  # the state tensors themselves move on with the next step
    new = build_optimizer({"backbone": list(encoder.parameters()), "lora": list(adapter.parameters()),
                           "heads": list(head.parameters())}, config)
    load_optimizer_state(new, saved)
    assert [group["name"] for group in new.param_groups] == ["backbone", "lora", "heads"]
    assert [group["lr"] for group in new.param_groups] == [1e-3, 1e-3, 1e-2]
    for parameter in [*encoder.parameters(), *adapter.parameters(), *head.parameters()]:
        for key in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(new.state[parameter][key], old.state[parameter][key])
    snapshot = [parameter.detach().clone() for parameter in [*encoder.parameters(), *adapter.parameters(),
                                                             *head.parameters()]]
    step(old)
    after_old = [parameter.detach().clone() for parameter in [*encoder.parameters(), *adapter.parameters(),
                                                              *head.parameters()]]
    with torch.no_grad():
        for parameter, value in zip([*encoder.parameters(), *adapter.parameters(), *head.parameters()], snapshot,
                                    strict=True):
            parameter.copy_(value)
    load_optimizer_state(new, saved)  # the state before old's second step
    step(new)
    for parameter, expected in zip([*encoder.parameters(), *adapter.parameters(), *head.parameters()], after_old,
                                   strict=True):
        torch.testing.assert_close(parameter.detach(), expected, rtol=0, atol=0)
    # Another model's state is still refused.
    with pytest.raises(ValueError):
        load_optimizer_state(build_optimizer({"backbone": list(encoder.parameters())}, config), saved)
