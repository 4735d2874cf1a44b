"""SERModel end to end on tiny models: batching invariance, attribute order, freezing, training, loss."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from sertool.core.config import ModelConfig
from sertool.core.errors import SertoolError
from sertool.data.records import ATTRIBUTES
from sertool.models.auxiliary import IGNORE_INDEX, aam_softmax_loss, masked_cross_entropy
from sertool.models.backbones import LayerWeighting
from sertool.models.ccc import ccc
from sertool.models.heads import LabelScaling
from sertool.models.losses import SERLoss
from sertool.models.ser_model import ModelOutput, SERModel
from sertool.models.speaker_embedding import SpeakerEmbedder
from tests.tiny_speech import save_tiny_wavlm, save_tiny_wavlm_xvector
from tests.tiny_text import save_tiny_text_encoder

# transformers' WavLM attention passes torch a bool padding mask with a float position bias.
pytestmark = pytest.mark.filterwarnings("ignore:Support for mismatched key_padding_mask:UserWarning")

SAMPLE_RATE = 16_000
LENGTHS = [9_600, 4_000, 6_400]  # 0.6 s, 0.25 s (shorter than the x-vector's receptive field), 0.4 s
TEXTS = ["i am very happy", "sad", "the table is wooden"]
NUM_SPEAKERS = 4


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny_models")
    return {
        "wavlm": save_tiny_wavlm(root / "wavlm"),
        "text": save_tiny_text_encoder(root / "text", family="roberta"),
        "xvector": save_tiny_wavlm_xvector(root / "xvector"),
    }


def make_config(tiny: dict[str, Path], backbone: str = "fbank", **fields) -> ModelConfig:
    sizes = dict(fbank_dim=32, head_hidden_dim=16, head_dropout=0.1)
    path = str(tiny[backbone]) if backbone in tiny else None
    return ModelConfig(backbone=backbone, backbone_path=path, **{**sizes, **fields})


def full_config(tiny: dict[str, Path], backbone: str, pooling: str) -> ModelConfig:
    """Every branch at once: text, speaker embedding, gender and speaker heads."""
    return make_config(
        tiny,
        backbone,
        pooling=pooling,
        text=True,
        text_model=str(tiny["text"]),
        speaker_embedding=str(tiny["xvector"]),
        aux=("gender", "speaker"),
    )


def padded_batch(lengths: list[int] = LENGTHS, *, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Speech-like noise; the padding holds loud noise too, which the model must ignore."""
    generator = torch.Generator().manual_seed(seed)
    waveforms = torch.randn(len(lengths), max(lengths), generator=generator)
    time_s = torch.arange(max(lengths)) / SAMPLE_RATE
    envelope = 0.1 * (1 + torch.sin(2 * torch.pi * 3.0 * time_s))
    sample_mask = torch.arange(max(lengths)) < torch.tensor(lengths).unsqueeze(1)
    return torch.where(sample_mask, waveforms * envelope, waveforms), sample_mask


def output_fields(output: ModelOutput) -> dict[str, torch.Tensor]:
    fields = {"emotion": output.emotion, "gender_logits": output.gender_logits}
    fields.update(speaker_embedding=output.speaker_embedding, speaker_cosine=output.speaker_cosine)
    return {name: value for name, value in fields.items() if value is not None}


@pytest.mark.parametrize("pooling", ["attentive", "mean"])
@pytest.mark.parametrize("backbone", ["fbank", "wavlm"])
def test_padded_batch_equals_one_at_a_time(tiny, backbone: str, pooling: str) -> None:
    torch.manual_seed(0)
    model = SERModel(full_config(tiny, backbone, pooling), num_speakers=NUM_SPEAKERS).eval()
    waveforms, sample_mask = padded_batch()
    with torch.no_grad():
        text_embeddings = model.text_encoder.embed(TEXTS)
        batched = output_fields(model(waveforms, sample_mask, text_embeddings=text_embeddings))
        assert set(batched) == {"emotion", "gender_logits", "speaker_embedding", "speaker_cosine"}
        for row, length in enumerate(LENGTHS):
            # One at a time, with the transcript embedded inside forward this time.
            one = (waveforms[row : row + 1, :length], sample_mask[row : row + 1, :length])
            alone = output_fields(model(*one, texts=[TEXTS[row]]))
            for name, value in batched.items():
                assert (value[row] - alone[name][0]).abs().max().item() <= 1e-4, name


def test_output_columns_are_arousal_valence_dominance(tiny) -> None:
    torch.manual_seed(0)
    model = SERModel(make_config(tiny, head_output="linear")).eval()
    waveforms, sample_mask = padded_batch()
    with torch.no_grad():
        before = model(waveforms, sample_mask).emotion
        for column, name in enumerate(ATTRIBUTES):
            model.emotion_heads.heads[name][-1].bias += 1.0  # shift one named head's output
            after = model(waveforms, sample_mask).emotion
            moved = (after - before).abs().amax(dim=0)
            assert moved.argmax().item() == column and moved[column].item() == pytest.approx(1.0, abs=1e-5)
            assert moved.sum().item() == pytest.approx(1.0, abs=1e-5)
            before = after


def test_frozen_parts_get_no_gradient(tiny) -> None:
    config = make_config(
        tiny, "wavlm", freeze_backbone=True, text=True, text_model=str(tiny["text"]),
        speaker_embedding=str(tiny["xvector"]),
    )
    model = SERModel(config).train()
    waveforms, sample_mask = padded_batch()
    targets = torch.rand(len(LENGTHS), 3)
    total, _ = SERLoss(config)(model(waveforms, sample_mask, texts=TEXTS), targets)
    total.backward()
    frozen = {name for name, parameter in model.named_parameters() if not parameter.requires_grad}
    assert {name for name, _ in model.text_encoder.named_parameters(prefix="text_encoder")} <= frozen
    assert {name for name, _ in model.speaker_embedder.named_parameters(prefix="speaker_embedder")} <= frozen
    assert {name for name, _ in model.backbone.model.named_parameters(prefix="backbone.model")} <= frozen
    for name, parameter in model.named_parameters():
        if name in frozen:
            assert parameter.grad is None, name
        else:
            assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name
    # Frozen pretrained encoders stay in eval mode (no dropout) while the rest trains.
    assert not model.text_encoder.encoder.training and not model.speaker_embedder.model.training


def test_fine_tuned_wavlm_keeps_its_cnn_front_end_frozen(tiny) -> None:
    model = SERModel(make_config(tiny, "wavlm"))
    waveforms, sample_mask = padded_batch()
    model(waveforms, sample_mask).emotion.sum().backward()
    for name, parameter in model.backbone.model.named_parameters():
        if name.startswith("feature_extractor."):
            assert not parameter.requires_grad and parameter.grad is None, name
    assert any(p.grad is not None for n, p in model.backbone.model.named_parameters() if n.startswith("encoder."))


def test_parameter_groups_split_backbone_adapters_and_heads(tiny) -> None:
    config = make_config(tiny, "wavlm", text=True, text_model=str(tiny["text"]), lora_rank=2, aux=("gender",))
    model = SERModel(config)
    groups = model.parameter_groups()
    assert list(groups) == ["backbone", "lora", "heads"]
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    backbone, adapters, heads = ({id(p) for p in groups[name]} for name in ("backbone", "lora", "heads"))
    assert backbone | adapters | heads == trainable and not backbone & adapters and not (backbone | adapters) & heads
    lora = {id(p) for n, p in model.text_encoder.named_parameters() if n.endswith(("lora_a", "lora_b"))}
    assert lora and lora == adapters
    # Concatenated, the groups list the trainable parameters in the model's order: the adapters are where the
    # single "backbone" group of older runs had them, its tail (what resuming such a run relies on).
    in_order = [id(p) for p in model.parameters() if p.requires_grad]
    pretrained = [i for i in in_order if i in backbone | adapters]
    assert [id(p) for group in groups.values() for p in group] == pretrained + [i for i in in_order if i in heads]
    layer_weights = {id(p) for m in model.modules() if isinstance(m, LayerWeighting) for p in m.parameters()}
    assert layer_weights and layer_weights <= heads  # trained from scratch, like the heads
    assert {id(p) for p in model.emotion_heads.parameters()} <= heads
    assert {id(p) for p in model.gender_head.parameters()} <= heads
    assert {id(p) for p in model.backbone.model.encoder.parameters()} <= backbone
    # The fbank encoder has no pretrained weights: all of it trains at the heads' rate.
    fbank = SERModel(make_config(tiny))
    assert not fbank.parameter_groups()["backbone"]
    assert {id(p) for p in fbank.parameter_groups()["heads"]} == {id(p) for p in fbank.parameters()}


def test_loss_decreases_on_a_fixed_batch(tiny) -> None:
    torch.manual_seed(0)
    config = make_config(tiny, head_dropout=0.0, text=True, text_model=str(tiny["text"]), aux=("gender", "speaker"))
    model = SERModel(config, num_speakers=NUM_SPEAKERS).train()
    lengths = [8_000, 6_000, 4_000, 7_000, 5_000, 3_000]
    waveforms, sample_mask = padded_batch(lengths, seed=1)
    text_embeddings = model.text_encoder.embed(["a", "happy", "sad", "the table", "i am", "wooden"])
    targets = LabelScaling().to_unit(torch.tensor([[2.0, 4.0, 2.6], [5.0, 6.2, 4.4], [3.0, 3.0, 3.0],
                                                   [6.0, 1.8, 5.6], [4.0, 4.0, 4.0], [1.6, 2.0, 2.0]]))
    gender_ids = torch.tensor([0, 1, IGNORE_INDEX, 1, 0, 1])
    speaker_ids = torch.tensor([0, 1, 2, IGNORE_INDEX, 3, 1])
    loss_fn = SERLoss(config)
    optimizer = torch.optim.Adam([{"params": group} for group in model.parameter_groups().values()], lr=3e-3)
    history = []
    for _ in range(25):
        optimizer.zero_grad()
        output = model(waveforms, sample_mask, text_embeddings=text_embeddings)
        total, parts = loss_fn(output, targets, gender_ids=gender_ids, speaker_ids=speaker_ids)
        total.backward()
        optimizer.step()
        history.append(parts)
    assert history[-1]["total"] < 0.5 * history[0]["total"]
    assert history[-1]["emotion"] < history[0]["emotion"] and history[-1]["gender"] < history[0]["gender"]


def test_loss_is_the_weighted_sum_of_its_parts(tiny) -> None:
    config = make_config(
        tiny, aux=("gender", "speaker"), emotion_weight=0.7, aux_weight=0.3, aam_margin=0.25, aam_scale=10.0
    )
    generator = torch.Generator().manual_seed(0)
    output = ModelOutput(
        emotion=torch.rand(5, 3, generator=generator),
        gender_logits=torch.randn(5, 2, generator=generator),
        speaker_cosine=torch.rand(5, 4, generator=generator) * 2 - 1,
    )
    targets = torch.rand(5, 3, generator=generator)
    gender_ids = torch.tensor([0, 1, IGNORE_INDEX, 1, 0])
    speaker_ids = torch.tensor([3, IGNORE_INDEX, 0, 1, 1])
    total, parts = SERLoss(config)(output, targets, gender_ids=gender_ids, speaker_ids=speaker_ids)
    emotion = sum(1 - ccc(output.emotion[:, i], targets[:, i]) for i in range(3))
    gender = masked_cross_entropy(output.gender_logits, gender_ids)
    speaker = aam_softmax_loss(output.speaker_cosine, speaker_ids, margin=0.25, scale=10.0)
    assert total.item() == pytest.approx((0.7 * emotion + 0.3 * (gender + speaker)).item(), abs=1e-5)
    assert set(parts) == {"ccc_arousal", "ccc_valence", "ccc_dominance", "emotion", "gender", "speaker", "total"}
    assert all(value.shape == () and not value.requires_grad for value in parts.values())  # read once per step
    assert parts["ccc_valence"].item() == pytest.approx(ccc(output.emotion[:, 1], targets[:, 1]).item(), abs=1e-6)
    with pytest.raises(ValueError, match="gender_ids"):
        SERLoss(config)(output, targets, speaker_ids=speaker_ids)


def test_speaker_embedder_matches_transformers_one_at_a_time(tiny, tmp_path: Path) -> None:
    from transformers import AutoFeatureExtractor, WavLMForXVector

    waveforms, sample_mask = padded_batch()
    # Layer-norm and group-norm (base-size, padding-sensitive) front ends alike.
    for folder in (tiny["xvector"], save_group_norm_xvector(tmp_path / "group")):
        embedder = SpeakerEmbedder(str(folder))
        batched = embedder(waveforms, sample_mask)
        assert batched.shape == (len(LENGTHS), embedder.output_dim) and torch.isfinite(batched).all()
        short = embedder(waveforms[1:2, : LENGTHS[1]], sample_mask[1:2, : LENGTHS[1]])[0]
        assert (batched[1] - short).abs().max().item() <= 1e-4 * short.abs().max().item()
        reference_model = WavLMForXVector.from_pretrained(folder).eval()
        extractor = AutoFeatureExtractor.from_pretrained(folder)
        for row in (0, 2):  # row 1 is shorter than the receptive field: sertool pads it, transformers fails
            inputs = extractor(waveforms[row, : LENGTHS[row]].numpy(), sampling_rate=SAMPLE_RATE, return_tensors="pt")
            with torch.no_grad():
                expected = reference_model(input_values=inputs["input_values"]).embeddings[0]
            # Random tiny x-vectors are small numbers: compare relative to their size.
            assert (batched[row] - expected).abs().max().item() <= 1e-4 * expected.abs().max().item()


def save_group_norm_xvector(folder: Path) -> Path:
    """A tiny x-vector model with the base models' group-norm front end (padding-sensitive)."""
    from transformers import Wav2Vec2FeatureExtractor, WavLMConfig, WavLMForXVector

    torch.manual_seed(1)
    config = WavLMConfig(
        hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, conv_dim=(16,) * 7,
        num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4, feat_extract_norm="group",
        do_stable_layer_norm=False, num_buckets=32, max_bucket_distance=64, tdnn_dim=(16,) * 5,
        xvector_output_dim=8, num_labels=2,
    )
    WavLMForXVector(config).save_pretrained(folder)
    Wav2Vec2FeatureExtractor(do_normalize=False, return_attention_mask=False).save_pretrained(folder)
    return folder


def test_config_errors(tiny) -> None:
    with pytest.raises(SertoolError, match="--aux"):
        SERModel(make_config(tiny, aux=("emotion_class",)))
    with pytest.raises(SertoolError, match="--aux speaker"):
        SERModel(make_config(tiny, aux=("speaker",)), num_speakers=0)
    text_model = SERModel(make_config(tiny, text=True, text_model=str(tiny["text"])))
    waveforms, sample_mask = padded_batch()
    with pytest.raises(SertoolError, match="--text"):
        text_model(waveforms, sample_mask)
    with pytest.raises(ValueError, match="shape"):
        text_model(waveforms, sample_mask, text_embeddings=torch.zeros(len(LENGTHS), 5))
    plain = SERModel(make_config(tiny))
    with pytest.raises(ValueError, match="text branch"):
        plain(waveforms, sample_mask, texts=TEXTS)
    lora = SERModel(make_config(tiny, text=True, text_model=str(tiny["text"]), lora_rank=2))
    assert lora.needs_texts and not text_model.needs_texts
    with pytest.raises(ValueError, match="LoRA"):
        lora(waveforms, sample_mask, text_embeddings=torch.zeros(len(LENGTHS), lora.text_encoder.output_dim))


def test_outputs_without_auxiliary_heads(tiny) -> None:
    model = SERModel(make_config(tiny))
    assert model.representation_dim == 2 * 32  # attentive pooling: mean ⊕ std of fbank_dim
    output = model(*padded_batch())
    assert output.emotion.shape == (len(LENGTHS), 3)
    assert output.gender_logits is None and output.speaker_cosine is None and output.speaker_embedding is None


def test_label_scaling_round_trip() -> None:
    scaling = LabelScaling()
    ratings = torch.tensor([1.0, 2.5, 4.0, 7.0])
    torch.testing.assert_close(scaling.to_unit(ratings), torch.tensor([0.0, 0.25, 0.5, 1.0]))
    torch.testing.assert_close(scaling.from_unit(scaling.to_unit(ratings)), ratings)
    assert scaling.from_unit(1.5) == 10.0 and scaling.from_unit(0.5) == 4.0 and scaling.to_unit(4.0) == 0.5
    # What a model predicts: clipped to the scale, float64; a non-finite output stays non-finite for the checks.
    predicted = scaling.ratings(np.array([-0.1, 1.2, 0.25, np.nan, np.inf, -np.inf], dtype=np.float32))
    assert predicted.dtype == np.float64
    np.testing.assert_array_equal(predicted, [1.0, 7.0, 2.5, np.nan, np.inf, -np.inf])
    assert scaling.to_dict() == {"minimum": 1.0, "maximum": 7.0}
    assert LabelScaling.from_dict(scaling.to_dict()) == scaling


def test_sigmoid_heads_keep_predictions_on_the_rating_scale(tiny) -> None:
    torch.manual_seed(0)
    model = SERModel(make_config(tiny)).eval()
    waveforms, sample_mask = padded_batch()
    with torch.no_grad():
        for name in ATTRIBUTES:
            model.emotion_heads.heads[name][-1].bias += 50.0  # a head driven far off the scale
        ratings = model.label_scaling.from_unit(model(waveforms, sample_mask).emotion)
    assert float(ratings.min()) >= 1.0 and float(ratings.max()) <= 7.0


def test_a_model_built_from_configs_alone_has_the_real_ones_parameters(tiny, tmp_path):
    """``pretrained_weights=False``: every pretrained part from its config.json alone (a folder that holds nothing
    else will do), with the shapes, dtypes and trainable flags of the model loaded with its weights."""
    configs_only = {}
    for name in ("wavlm", "text", "xvector"):
        configs_only[name] = tmp_path / name
        configs_only[name].mkdir()
        (configs_only[name] / "config.json").write_text((tiny[name] / "config.json").read_text())

    def config(folders: dict[str, Path]) -> ModelConfig:
        return ModelConfig(backbone="wavlm", backbone_path=str(folders["wavlm"]), text=True,
                           text_model=str(folders["text"]), speaker_embedding=str(folders["xvector"]))

    real = SERModel(config(tiny))
    planned = SERModel(config(configs_only), pretrained_weights=False)
    shapes = {name: (tuple(p.shape), p.dtype, p.requires_grad) for name, p in real.named_parameters()}
    assert {name: (tuple(p.shape), p.dtype, p.requires_grad) for name, p in planned.named_parameters()} == shapes
    assert planned.text_encoder is not None and planned.text_encoder.tokenizer is None  # a frozen one embeds nothing
    with pytest.raises(ValueError, match="no tokenizer"):
        planned.text_encoder.embed(TEXTS)
    name = "backbone.model.encoder.layers.0.feed_forward.output_dense.weight"  # random, not the folder's
    assert not torch.equal(dict(planned.named_parameters())[name], dict(real.named_parameters())[name])
