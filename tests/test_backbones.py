"""Speech backbones: batching invariance, masks, layer weighting, freezing, LoRA, Whisper parity, errors."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from sertool.core.config import ModelConfig
from sertool.core.errors import SertoolError
from sertool.models.backbones import FbankBackbone, SpeechBackbone, build_backbone, normalize_per_utterance
from sertool.models.lora import LoRALinear
from tests.tiny_speech import (
    save_tiny_hubert,
    save_tiny_wav2vec2,
    save_tiny_wavlm,
    save_tiny_wavlm_xvector,
    save_tiny_whisper,
)

# transformers' WavLM attention passes torch a bool padding mask with a float position bias.
pytestmark = pytest.mark.filterwarnings("ignore:Support for mismatched key_padding_mask:UserWarning")

SAMPLE_RATE = 16_000
THIRTY_S = 30 * SAMPLE_RATE
BUILDERS = {
    "wavlm": save_tiny_wavlm,
    "hubert": save_tiny_hubert,
    "wav2vec2": save_tiny_wav2vec2,
    "whisper": save_tiny_whisper,
}


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny_speech")
    return {name: build(root / name) for name, build in BUILDERS.items()}


def _build(tiny_models: dict[str, Path], backbone: str, **fields) -> SpeechBackbone:
    path = str(tiny_models[backbone]) if backbone in tiny_models else None
    return build_backbone(ModelConfig(backbone=backbone, backbone_path=path, **fields))


def _speech_like(num_samples: int, *, seed: int) -> torch.Tensor:
    """Noise with a syllable-rate envelope plus a tone: louder and quieter stretches, like speech."""
    generator = torch.Generator().manual_seed(seed)
    time_s = torch.arange(num_samples) / SAMPLE_RATE
    envelope = 1.0 + torch.sin(2 * torch.pi * 3.0 * time_s)
    noise = 0.1 * envelope * torch.randn(num_samples, generator=generator)
    return noise + 0.2 * torch.sin(2 * torch.pi * 220.0 * time_s)


def _padded_batch(lengths: list[int], *, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch whose padding holds loud noise: a backbone must ignore it, not merely expect zeros."""
    generator = torch.Generator().manual_seed(seed)
    max_length = max(lengths)
    waveforms = torch.randn(len(lengths), max_length, generator=generator)
    for row, length in enumerate(lengths):
        waveforms[row, :length] = _speech_like(length, seed=seed + row)
    sample_mask = torch.arange(max_length) < torch.tensor(lengths).unsqueeze(-1)
    return waveforms, sample_mask


# ---- every backbone: padding invariance and frame masks ----


@pytest.mark.parametrize("backbone", ["wavlm", "hubert", "wav2vec2", "whisper", "fbank"])
def test_padded_batch_equals_one_at_a_time(tiny_models, backbone):
    model = _build(tiny_models, backbone).eval()
    lengths = [24_000, 13_100, 300]  # the last is shorter than a 25-ms window / the CNN's receptive field
    waveforms, sample_mask = _padded_batch(lengths)
    with torch.no_grad():
        frames, frame_mask = model(waveforms, sample_mask)
        assert frames.shape[-1] == model.output_dim
        assert torch.all(frames[~frame_mask] == 0)
        for row, length in enumerate(lengths):
            alone, alone_mask = model(waveforms[row : row + 1, :length], sample_mask[row : row + 1, :length])
            assert alone_mask.all(), "an unpadded utterance has no padded frames"
            num_frames = alone.shape[1]
            assert int(frame_mask[row].sum()) == num_frames >= 1
            torch.testing.assert_close(frames[row, :num_frames], alone[0], atol=1e-4, rtol=0)


def test_group_norm_front_ends_are_not_padding_invariant(tmp_path):
    """The documented caveat: a group-norm CNN normalises over the padded length, so padding leaks."""
    folder = save_tiny_wavlm(tmp_path / "group", feat_extract_norm="group", do_stable_layer_norm=False)
    model = _build({"wavlm": folder}, "wavlm").eval()
    waveforms, sample_mask = _padded_batch([32_000, 16_000])
    with torch.no_grad():
        frames, frame_mask = model(waveforms, sample_mask)
        alone, _ = model(waveforms[1:, :16_000], sample_mask[1:, :16_000])
    assert (frames[1, : alone.shape[1]] - alone[0]).abs().max() > 1e-2


@pytest.mark.parametrize("backbone", ["wavlm", "hubert", "wav2vec2"])
def test_frame_mask_follows_transformers_length_arithmetic(tiny_models, backbone):
    model = _build(tiny_models, backbone, layer_weighting="last").eval()
    lengths = [16_000, 15_999, 8_321, 4_000, 400]
    waveforms, sample_mask = _padded_batch(lengths)
    with torch.no_grad():
        frames, frame_mask = model(waveforms, sample_mask)
    expected = model.model._get_feature_vector_attention_mask(frames.shape[1], sample_mask.long())
    assert torch.equal(frame_mask, expected.bool())


def test_whisper_frames_are_half_the_mel_frames(tiny_models):
    model = _build(tiny_models, "whisper").eval()
    lengths = [32_000, 31_999, 16_161, 480]
    waveforms, sample_mask = _padded_batch(lengths)
    with torch.no_grad():
        _, frame_mask = model(waveforms, sample_mask)
    mel_frames = torch.tensor(lengths) // 160  # WhisperFeatureExtractor: one frame per 10 ms hop
    expected = model.encoder._get_feat_extract_output_lengths(mel_frames)
    assert frame_mask.sum(dim=-1).tolist() == expected.tolist() == [100, 100, 51, 2]


# ---- wav2vec2 family: input normalisation, layer weighting, freezing ----


def test_input_normalisation_matches_the_feature_extractor():
    from transformers import Wav2Vec2FeatureExtractor

    extractor = Wav2Vec2FeatureExtractor(do_normalize=True, return_attention_mask=True)
    lengths = [8_000, 5_000]
    utterances = [3.0 + 2.0 * _speech_like(length, seed=length).numpy() for length in lengths]  # offset and scaled
    reference = extractor(utterances, sampling_rate=SAMPLE_RATE, padding=True, return_tensors="pt")
    waveforms, sample_mask = _padded_batch(lengths)
    waveforms[0, :8_000] = torch.from_numpy(utterances[0])
    waveforms[1, :5_000] = torch.from_numpy(utterances[1])
    normalized = normalize_per_utterance(waveforms * sample_mask, sample_mask)
    torch.testing.assert_close(normalized, reference.input_values, atol=1e-5, rtol=0)


def test_normalisation_follows_the_preprocessor_config_else_the_front_end(tmp_path):
    assert _build({"wavlm": save_tiny_wavlm(tmp_path / "on")}, "wavlm").normalize_input
    assert not _build({"wavlm": save_tiny_wavlm(tmp_path / "off", do_normalize=False)}, "wavlm").normalize_input
    for norm, expected in [("layer", True), ("group", False)]:
        folder = save_tiny_wavlm(tmp_path / norm, feat_extract_norm=norm, do_stable_layer_norm=norm == "layer")
        (folder / "preprocessor_config.json").unlink()
        assert _build({"wavlm": folder}, "wavlm").normalize_input is expected


def test_last_layer_equals_transformers_last_hidden_state(tiny_models):
    from transformers import AutoModel, Wav2Vec2FeatureExtractor

    model = _build(tiny_models, "wavlm", layer_weighting="last").eval()
    reference = AutoModel.from_pretrained(tiny_models["wavlm"]).eval()
    utterance = _speech_like(12_345, seed=3)
    inputs = Wav2Vec2FeatureExtractor.from_pretrained(tiny_models["wavlm"])(
        utterance.numpy(), sampling_rate=SAMPLE_RATE, return_tensors="pt"
    )
    with torch.no_grad():
        expected = reference(**inputs).last_hidden_state
        frames, _ = model(utterance.unsqueeze(0), torch.ones(1, 12_345, dtype=torch.bool))
    torch.testing.assert_close(frames, expected, atol=1e-5, rtol=0)


def test_layer_weights_start_uniform_and_get_gradients(tiny_models):
    from transformers import AutoModel

    model = _build(tiny_models, "wavlm").eval()
    assert model.layer_weights is not None and model.layer_weights.logits.numel() == 3  # embeddings + 2 layers
    reference = AutoModel.from_pretrained(tiny_models["wavlm"]).eval()
    waveform = _speech_like(8_000, seed=4).unsqueeze(0)
    sample_mask = torch.ones_like(waveform, dtype=torch.bool)
    with torch.no_grad():
        normalized = normalize_per_utterance(waveform, sample_mask)
        output = reference(normalized, output_hidden_states=True)
    # The last state is the encoder's output (after its final layer norm), as transformers 4.x returned it;
    # transformers 5.x's last hidden state is the one before that norm.
    hidden_states = (*output.hidden_states[:-1], output.last_hidden_state)
    assert not torch.allclose(output.hidden_states[-1], output.last_hidden_state)
    frames, _ = model(waveform, sample_mask)
    torch.testing.assert_close(frames, torch.stack(hidden_states).mean(dim=0), atol=1e-5, rtol=0)
    frames.pow(2).mean().backward()
    assert model.layer_weights.logits.grad is not None and model.layer_weights.logits.grad.abs().sum() > 0


def _backward(model: SpeechBackbone) -> None:
    waveforms, sample_mask = _padded_batch([20_000, 12_000])
    frames, frame_mask = model(waveforms, sample_mask)
    frames[frame_mask].pow(2).mean().backward()


def test_wavlm_fine_tunes_with_cnn_front_end_frozen(tiny_models):
    model = _build(tiny_models, "wavlm").train()
    assert model.model.training
    _backward(model)
    cnn = dict(model.model.feature_extractor.named_parameters())
    assert cnn and all(not p.requires_grad and p.grad is None for p in cnn.values())
    layers = list(model.model.encoder.layers.parameters())
    assert all(p.requires_grad for p in layers) and any(p.grad is not None and p.grad.abs().sum() > 0 for p in layers)


def test_frozen_wavlm_trains_only_its_layer_weights(tiny_models):
    model = _build(tiny_models, "wavlm", freeze_backbone=True).train()
    assert not model.model.training, "a frozen encoder stays in eval mode"
    _backward(model)
    assert all(not p.requires_grad and p.grad is None for p in model.model.parameters())
    assert [name for name, p in model.named_parameters() if p.requires_grad] == ["layer_weights.logits"]
    assert model.layer_weights.logits.grad is not None


def test_weighted_layers_turn_off_layerdrop_so_every_layer_has_a_state(tiny_models):
    weighted = _build(tiny_models, "wavlm").train()
    assert weighted.model.config.layerdrop == 0.0 and not weighted.drops_layers
    last = _build(tiny_models, "wavlm", layer_weighting="last")
    assert last.model.config.layerdrop == 0.1 and last.drops_layers  # WavLMConfig default: DDP must know
    assert not _build(tiny_models, "wavlm", layer_weighting="last", freeze_backbone=True).drops_layers  # eval mode
    assert not _build(tiny_models, "whisper").drops_layers
    torch.manual_seed(0)
    for _ in range(4):  # each would fail on a missing hidden state
        _backward(weighted)


def _saved_tensor_bytes_and_gradient(model: SpeechBackbone, parameter: torch.nn.Parameter) -> tuple[int, torch.Tensor]:
    """Bytes autograd keeps for the backward pass of one training step, and one parameter's gradient."""
    saved_bytes = 0

    def count(tensor: torch.Tensor) -> torch.Tensor:
        nonlocal saved_bytes
        saved_bytes += tensor.numel() * tensor.element_size()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(count, lambda tensor: tensor):
        _backward(model)
    return saved_bytes, parameter.grad


@pytest.mark.parametrize("backbone", ["wavlm", "whisper"])
def test_gradient_checkpointing_saves_memory_not_gradients(tiny_models, backbone):
    results = []
    for checkpointing in (False, True):
        torch.manual_seed(0)  # the same random LoRA matrices
        config = ModelConfig(backbone=backbone, backbone_path=str(tiny_models[backbone]),
                             lora_rank=2 if backbone == "whisper" else 0)  # LoRA needs a frozen encoder
        model = build_backbone(config, gradient_checkpointing=checkpointing).train()
        if backbone == "wavlm":
            model.model.config.mask_time_prob = 0.0  # SpecAugment draws random numbers
            parameter = model.model.encoder.layers[0].feed_forward.output_dense.weight
        else:
            parameter = model.encoder.layers[0].self_attn.q_proj.lora_b  # the frozen encoder's LoRA adapter
        results.append(_saved_tensor_bytes_and_gradient(model, parameter))
    (plain_bytes, plain_gradient), (checkpointed_bytes, checkpointed_gradient) = results
    assert checkpointed_bytes < plain_bytes  # equal if checkpointing were off
    assert plain_gradient.abs().sum() > 0
    torch.testing.assert_close(checkpointed_gradient, plain_gradient, atol=1e-6, rtol=1e-5)


# ---- Whisper: freezing, LoRA, parity with transformers, the real-length path ----


def test_whisper_is_frozen_by_default(tiny_models):
    model = _build(tiny_models, "whisper").train()
    assert not model.encoder.training
    _backward(model)
    assert all(not p.requires_grad and p.grad is None for p in model.encoder.parameters())
    assert model.layer_weights.logits.grad is not None


def test_whisper_lora_starts_as_identity_and_only_adapters_train(tiny_models):
    plain = _build(tiny_models, "whisper").eval()
    adapted = _build(tiny_models, "whisper", lora_rank=4, lora_alpha=8.0)
    assert sum(isinstance(m, LoRALinear) for m in adapted.encoder.modules()) == 2 * 2  # q, v in 2 layers
    waveforms, sample_mask = _padded_batch([16_000, 9_000])
    with torch.no_grad():
        assert torch.equal(adapted.eval()(waveforms, sample_mask)[0], plain(waveforms, sample_mask)[0])
    adapted.train()
    _backward(adapted)
    trainable = {name for name, p in adapted.named_parameters() if p.requires_grad}
    assert trainable and all(name.endswith(("lora_a", "lora_b", "layer_weights.logits")) for name in trainable)
    assert all(p.grad is None for name, p in adapted.named_parameters() if name not in trainable)
    lora_b = [p for name, p in adapted.named_parameters() if name.endswith("lora_b")]
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in lora_b)


def test_lora_on_a_fine_tuned_whisper_is_refused(tiny_models):
    with pytest.raises(SertoolError, match="--lora-rank"):
        _build(tiny_models, "whisper", freeze_backbone=False, lora_rank=4)


@pytest.mark.parametrize("backbone", ["wavlm", "fbank"])
def test_lora_with_nothing_frozen_to_adapt_is_refused(tiny_models, backbone):
    # a fine-tuned (or from-scratch) speech encoder and no text encoder: --lora-rank would change nothing
    with pytest.raises(SertoolError, match=r"^--lora-rank 4: .*drop --lora-rank"):
        _build(tiny_models, backbone, lora_rank=4)


def test_lora_on_a_fine_tuned_wavlm_with_text_is_left_to_the_text_encoder(tiny_models):
    model = _build(tiny_models, "wavlm", lora_rank=4, text=True)
    assert not any(isinstance(m, LoRALinear) for m in model.modules())
    assert model.model.encoder.layers[0].feed_forward.output_dense.weight.requires_grad  # fine-tuned as before


def test_frozen_wavlm_lora_starts_as_identity_and_only_adapters_train(tiny_models):
    plain = _build(tiny_models, "wavlm", freeze_backbone=True).eval()
    adapted = _build(tiny_models, "wavlm", freeze_backbone=True, lora_rank=4, lora_alpha=8.0)
    layers = len(adapted.model.encoder.layers)
    assert sum(isinstance(m, LoRALinear) for m in adapted.model.modules()) == 2 * layers  # the feed-forward pair
    waveforms, sample_mask = _padded_batch([16_000, 9_000])
    with torch.no_grad():
        assert torch.equal(adapted.eval()(waveforms, sample_mask)[0], plain(waveforms, sample_mask)[0])
    adapted.train()
    assert not adapted.model.training  # the frozen encoder stays in eval mode
    _backward(adapted)
    trainable = {name for name, p in adapted.named_parameters() if p.requires_grad}
    assert trainable and all(name.endswith(("lora_a", "lora_b", "layer_weights.logits")) for name in trainable)
    lora_b = [p for name, p in adapted.named_parameters() if name.endswith("lora_b")]
    assert len(lora_b) == 2 * layers and all(p.grad is not None and p.grad.abs().sum() > 0 for p in lora_b)


def _reference_whisper(folder: Path):
    from transformers import WhisperFeatureExtractor, WhisperModel

    return WhisperFeatureExtractor.from_pretrained(folder), WhisperModel.from_pretrained(folder).encoder.eval()


def test_whisper_at_30_s_equals_transformers(tiny_models):
    extractor, reference = _reference_whisper(tiny_models["whisper"])
    model = _build(tiny_models, "whisper").eval()
    utterance = _speech_like(THIRTY_S, seed=5)
    features = extractor(utterance.numpy(), sampling_rate=SAMPLE_RATE, return_tensors="pt").input_features
    sample_mask = torch.ones(1, THIRTY_S, dtype=torch.bool)
    with torch.no_grad():
        mel, _ = model.log_mel(utterance.unsqueeze(0), sample_mask.sum(dim=-1))
        expected = reference(features, output_hidden_states=True)
        frames, frame_mask = model(utterance.unsqueeze(0), sample_mask)
    torch.testing.assert_close(mel, features, atol=1e-4, rtol=0)
    assert frame_mask.shape == (1, 1500) and frame_mask.all()
    # uniform layer weights at init: the mean of transformers' hidden states
    torch.testing.assert_close(frames, torch.stack(expected.hidden_states).mean(dim=0), atol=1e-4, rtol=0)
    model.layer_weights = None  # "last"
    with torch.no_grad():
        last, _ = model(utterance.unsqueeze(0), sample_mask)
    torch.testing.assert_close(last, expected.last_hidden_state, atol=1e-4, rtol=0)


def test_whisper_real_length_against_the_30_s_padded_reference(tiny_models):
    """A 4-s utterance at real length vs padded to 30 s as transformers requires.

    The log-mel frames agree except the last two (the padded STFT sees zeros past the end instead of a
    reflection); the encoder outputs differ because, padded, every frame also attends to 26 s of silence.
    On this tiny random model the pooled outputs still have cosine similarity ≈ 0.999 (measured 0.9992);
    a trained large-v3 attends more sharply and differs more (see docs/backbones.md).
    """
    extractor, reference = _reference_whisper(tiny_models["whisper"])
    model = _build(tiny_models, "whisper", layer_weighting="last").eval()
    num_samples = 4 * SAMPLE_RATE
    utterance = _speech_like(num_samples, seed=6)
    padded_features = extractor(utterance.numpy(), sampling_rate=SAMPLE_RATE, return_tensors="pt").input_features
    assert padded_features.shape[-1] == 3000
    with torch.no_grad():
        mel, mel_lengths = model.log_mel(utterance.unsqueeze(0), torch.tensor([num_samples]))
        padded_frames = reference(padded_features).last_hidden_state
        frames, _ = model(utterance.unsqueeze(0), torch.ones(1, num_samples, dtype=torch.bool))
    num_mel = int(mel_lengths[0])
    assert num_mel == 400 and frames.shape[1] == 200
    torch.testing.assert_close(mel[..., : num_mel - 2], padded_features[..., : num_mel - 2], atol=1e-5, rtol=0)
    real_part = padded_frames[:, :200]
    assert (frames - real_part).abs().max() > 1e-3, "attention over the padding must show"
    cosine = torch.nn.functional.cosine_similarity(frames.mean(dim=1), real_part.mean(dim=1)).item()
    assert 0.99 < cosine < 1.0


def test_whisper_refuses_more_than_30_s(tiny_models):
    model = _build(tiny_models, "whisper").eval()
    too_long = THIRTY_S + 160  # one mel frame too many
    with pytest.raises(SertoolError, match="at most 30 s"):
        model(torch.zeros(1, too_long), torch.ones(1, too_long, dtype=torch.bool))


# ---- fbank ----


def test_fbank_trains_every_parameter_and_mixes_its_blocks():
    model = build_backbone(ModelConfig(backbone="fbank", fbank_dim=32))
    assert isinstance(model, FbankBackbone) and model.output_dim == 32
    _backward(model)
    assert all(p.requires_grad and p.grad is not None for p in model.parameters())
    with pytest.raises(SertoolError, match="--freeze-backbone"):
        build_backbone(ModelConfig(backbone="fbank", freeze_backbone=True))


# ---- errors ----


def test_unknown_backbone_names_the_flag_and_the_choices():
    with pytest.raises(SertoolError, match=r"--backbone 'wavlm2'.*wavlm, whisper, hubert, wav2vec2, fbank"):
        build_backbone(ModelConfig(backbone="wavlm2"))
    with pytest.raises(SertoolError, match="--layer-weighting"):
        build_backbone(ModelConfig(backbone="fbank", layer_weighting="mean"))


@pytest.mark.parametrize("backbone", ["wavlm", "whisper"])
def test_offline_default_hub_id_fails_fast_with_what_to_do(backbone, offline_hub, network_waits):
    with pytest.raises(SertoolError, match="--backbone-path"):
        build_backbone(ModelConfig(backbone=backbone))
    assert network_waits.none(), network_waits  # fast: nothing waited on a network or slept


def test_a_model_of_the_wrong_family_is_named(tiny_models):
    with pytest.raises(SertoolError, match="not Whisper"):
        build_backbone(ModelConfig(backbone="whisper", backbone_path=str(tiny_models["wavlm"])))
    with pytest.raises(SertoolError, match="a Whisper model; .*a Whisper model the whisper backbone"):
        build_backbone(ModelConfig(backbone="wavlm", backbone_path=str(tiny_models["whisper"])))


# ---- the tiny builders other tests reuse ----


def test_tiny_builders_are_deterministic_and_loadable(tmp_path):
    from safetensors.torch import load_file
    from transformers import WavLMForXVector

    first = load_file(save_tiny_wavlm_xvector(tmp_path / "a") / "model.safetensors")
    second = load_file(save_tiny_wavlm_xvector(tmp_path / "b") / "model.safetensors")
    assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)
    xvector = WavLMForXVector.from_pretrained(tmp_path / "a").eval()
    with torch.no_grad():
        embeddings = xvector(_speech_like(16_000, seed=7).unsqueeze(0)).embeddings
    assert embeddings.shape == (1, 32)
