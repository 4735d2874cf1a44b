"""The Whisper encoder, run at each utterance's real length instead of padded to 30 s.

transformers' ``WhisperEncoder.forward`` accepts only exactly 3000 mel frames (30 s) and no attention
mask, so this module drives its parts itself: a log-mel front end computed in torch exactly like
``WhisperFeatureExtractor``, then the encoder's ``conv1 → GELU → conv2 → GELU``, its position embeddings
cut to the length, its layers with an additive attention mask over padded frames, and its final
``layer_norm``. On a 30-s input this equals transformers' encoder; on a shorter one it differs from the
30-s padded reference, because there every frame also attends to the padded silence (see
docs/backbones.md for the measured relation).

With ``window_s`` (the authors' released Whisper model: 15 s) it instead pads every clip with zeros to
that window and lets every frame attend to the padding, as a model trained that way expects; only the
real frames are returned as valid.

Only the encoder's weights are read: the checkpoint is loaded as ``WhisperForAudioClassification``
(encoder only), which leaves the decoder's tensors (about half of large-v3) on disk.
"""
from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, cast

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from sertool.core.constants import SAMPLE_RATE
from sertool.core.errors import SertoolError
from sertool.core.hub import CLI_SPELLING, load_pretrained, spelled
from sertool.models.backbones.base import (
    SpeechBackbone,
    grad_context,
    lengths_to_mask,
    log_mel_power,
    make_layer_weighting,
    stack_layers,
)
from sertool.models.lora import SpeechLoRA, adapt_layers

if TYPE_CHECKING:
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

N_FFT = 400  # 25 ms analysis window
HOP_LENGTH = 160  # 10 ms between mel frames; the conv stem halves the rate to 20 ms per output frame
FRAME_RATE = SAMPLE_RATE / HOP_LENGTH / 2  # 50 encoder frames per second
LOG_MEL_DYNAMIC_RANGE = 8.0  # log10 units kept below each utterance's maximum (80 dB)
# The linear layers of an encoder layer that LoRA may wrap (``sertool.models.lora.adapt_layers``): the attention's
# query and value projections (placement qv), the feed-forward pair (ffn, release; the authors' release adapts it).
LORA_ATTENTION = ("q_proj", "v_proj")
LORA_FEED_FORWARD = ("fc1", "fc2")


class WhisperBackbone(SpeechBackbone):
    """A Whisper encoder that takes zero-padded waveforms of any length up to 30 s (or ``window_s``).

    Args:
        encoder: a transformers ``WhisperEncoder`` (its ``conv1``, ``conv2``, ``embed_positions``,
            ``layers`` and ``layer_norm`` are used; its ``forward`` is not).
        layer_weighting: ``"weighted"`` (softmax-weighted sum of the embeddings and every layer's output)
            or ``"last"`` (the output of the final layer norm, i.e. ``last_hidden_state``).
        frozen: freeze the encoder (the paper's choice); it then stays in eval mode and runs without
            gradients unless LoRA adapters are attached.
        freeze_feature_encoder: when fine-tuning, keep the conv stem frozen.
        lora: LoRA adapters for a frozen encoder (rank, alpha, placement: ``LORA_ATTENTION`` or
            ``LORA_FEED_FORWARD``); None: none.
        window_s: >0 pads every clip to this many seconds and lets frames attend to the padding (0: each
            clip at its real length, padding masked); at most what the position embeddings cover.
        gradient_checkpointing: recompute each encoder layer in the backward pass to save memory.

    Raises:
        SertoolError: LoRA asked for on an encoder that is fine-tuned anyway, or a window longer than
            the position embeddings.
    """

    # Buffers (register_buffer), declared so that their type is known.
    mel_filters: Tensor
    window: Tensor
    frame_rate = FRAME_RATE

    def __init__(
        self,
        encoder: WhisperEncoder,
        *,
        layer_weighting: str,
        frozen: bool,
        freeze_feature_encoder: bool,
        lora: SpeechLoRA | None = None,
        window_s: float = 0.0,
        gradient_checkpointing: bool = False,
    ) -> None:
        super().__init__()
        from transformers.audio_utils import mel_filter_bank

        self.encoder = encoder
        config = encoder.config
        self.output_dim = int(config.d_model)
        self.max_mel_frames = 2 * int(config.max_source_positions)  # the conv stem halves it; 3000 = 30 s
        _check_window(window_s, self.max_mel_frames)
        self.window_samples = round(window_s * SAMPLE_RATE)
        self.layer_weights = make_layer_weighting(layer_weighting, len(encoder.layers) + 1)
        self.gradient_checkpointing = gradient_checkpointing
        filters = mel_filter_bank(
            num_frequency_bins=1 + N_FFT // 2,
            num_mel_filters=config.num_mel_bins,
            min_frequency=0.0,
            max_frequency=SAMPLE_RATE / 2,
            sampling_rate=SAMPLE_RATE,
            norm="slaney",
            mel_scale="slaney",
        )  # the same call WhisperFeatureExtractor makes
        self.register_buffer("mel_filters", torch.from_numpy(filters).float().T.contiguous(), persistent=False)
        self.register_buffer("window", torch.hann_window(N_FFT), persistent=False)

        if frozen:
            encoder.requires_grad_(False)
            self._eval_only.append("encoder")
            if lora is not None:
                adapt_layers(encoder.layers, lora, attention=LORA_ATTENTION, feed_forward=LORA_FEED_FORWARD)
        elif lora is not None:
            raise SertoolError(
                "--lora-rank adapts a frozen Whisper encoder; this one is fine-tuned (--freeze-backbone is off)"
            )
        elif freeze_feature_encoder:
            encoder.conv1.requires_grad_(False)
            encoder.conv2.requires_grad_(False)
        self.train(self.training)

    @property
    def max_input_samples(self) -> int:
        """The longest clip ``forward`` takes, in samples: the window (``window_s``), else the longest whose mel
        frames the position embeddings cover (30 s and a partial hop for the released Whisper models)."""
        return self.window_samples or self.max_mel_frames * HOP_LENGTH + HOP_LENGTH - 1

    def front_end_settings(self) -> dict[str, object]:
        """See ``SpeechBackbone.front_end_settings``; ``layer``: the last state alone, or every state
        (``weighted``)."""
        return {"sample_rate": SAMPLE_RATE, "n_fft": N_FFT, "hop_length": HOP_LENGTH,
                "num_mel_bins": int(self.encoder.config.num_mel_bins), "log_mel_dynamic_range": LOG_MEL_DYNAMIC_RANGE,
                "window_s": self.window_samples / SAMPLE_RATE, "length": "real, key padding masked",
                "layer": "last" if self.layer_weights is None else "weighted",
                # Under --amp the log-mel was once computed in the autocast dtype: frames cached then differ.
                "log_mel_precision": "float32"}

    def frame_count(self, num_samples: int) -> int:
        """See ``SpeechBackbone.frame_count``: ``layer_states``' length arithmetic for one clip."""
        if self.window_samples:
            return max(1, (num_samples // HOP_LENGTH - 1) // 2 + 1)
        return (max(num_samples, N_FFT) // HOP_LENGTH - 1) // 2 + 1

    def log_mel(self, waveforms: Tensor, sample_lengths: Tensor) -> tuple[Tensor, Tensor]:
        """Whisper's log-mel spectrogram of each utterance at its real length.

        Each row is analysed as ``WhisperFeatureExtractor`` analyses one unpadded utterance: a centred STFT
        with reflect padding at the row's own ends (the reflections are gathered per row, so one batched
        STFT serves the whole batch), and the dynamic range cut below the maximum over the row's own frames;
        so a batch gives the same features as one item at a time. A row shorter than ``N_FFT`` samples is
        zero-padded to it. Computed in float32 whatever the autocast (``log_mel_power``): in fp16 an
        all-silent clip's floor would round to 0 and its log to −inf. No step depends on a value read back
        from the tensors, so the same code traces into an ONNX graph of any batch and length.

        Returns:
            ``mel`` ``[B, num_mel_bins, F]`` float32 (zero beyond each row's length) and ``mel_lengths`` ``[B]``.
        """
        half = N_FFT // 2
        lengths = sample_lengths.clamp(min=N_FFT)
        # Zeros after each row's end: the padding of a row shorter than N_FFT, and room for every index below.
        signal = nn.functional.pad(waveforms * lengths_to_mask(sample_lengths, waveforms.shape[-1]), (0, N_FFT))
        # Sample k of the centred row: k − half, reflected at 0 and at the row's last sample (torch.stft's
        # reflect padding); positions past a row's own end only feed frames its mask drops.
        # The ignore: arange takes a 0-d tensor as its end too (a trace records it as a value, not a constant).
        end = lengths.max() + N_FFT
        positions = (torch.arange(end, device=waveforms.device) - half).abs().unsqueeze(0)  # type: ignore[call-overload]
        last = lengths.unsqueeze(-1) - 1
        positions = torch.where(positions > last, 2 * last - positions, positions).clamp(min=0)
        centred = signal.gather(1, positions)
        # Drop the last frame, as the feature extractor does: a row keeps lengths // HOP_LENGTH frames.
        log_power = log_mel_power(centred, self.mel_filters, self.window, hop_length=HOP_LENGTH, center=False)[..., :-1]
        mel_lengths = lengths // HOP_LENGTH
        frame_mask = lengths_to_mask(mel_lengths, log_power.shape[-1]).unsqueeze(1)
        log_spec = log_power / math.log(10.0)  # log10, as the feature extractor
        row_max = log_spec.masked_fill(~frame_mask, -math.inf).amax(dim=(1, 2), keepdim=True)
        log_spec = torch.maximum(log_spec, row_max - LOG_MEL_DYNAMIC_RANGE)
        return (log_spec + 4.0) / 4.0 * frame_mask, mel_lengths

    def layer_states(self, waveforms: Tensor, sample_mask: Tensor) -> tuple[Tensor, Tensor]:
        """See ``SpeechBackbone.layer_states``: the embeddings and every layer's output (the last after the final
        layer norm), or that last one alone. Frames are 20 ms: ``T = ceil(mel_frames / 2)``.

        Raises:
            SertoolError: an utterance longer than the encoder's 30-s window (or ``window_s``).
        """
        encoder = self.encoder
        sample_lengths = sample_mask.sum(dim=-1)
        if self.window_samples:
            longest = int(sample_lengths.max())
            if longest > self.window_samples:
                window_s = self.window_samples / SAMPLE_RATE
                raise SertoolError(
                    f"this Whisper model takes clips of at most {window_s:g} s (--whisper-window-s); got an "
                    f"utterance of {longest / SAMPLE_RATE:.1f} s: cut long audio into windows of at most {window_s:g} s"
                )
            # Every clip analysed as its window: zeros after its end, as the feature extractor pads.
            waveforms = nn.functional.pad(waveforms * sample_mask, (0, self.window_samples - waveforms.shape[-1]))
            analysed = torch.full_like(sample_lengths, self.window_samples)
        else:
            analysed = sample_lengths
        mel, mel_lengths = self.log_mel(waveforms, analysed)
        if mel.shape[-1] > self.max_mel_frames:
            cap_s = self.max_mel_frames * HOP_LENGTH / SAMPLE_RATE
            longest_s = int(mel_lengths.max()) * HOP_LENGTH / SAMPLE_RATE
            raise SertoolError(
                f"Whisper's encoder covers at most {cap_s:g} s (its position embeddings end there); got an "
                f"utterance of {longest_s:.1f} s: cut long audio into windows of at most {cap_s:g} s"
            )
        frame_lengths = (mel_lengths - 1) // 2 + 1  # conv2: kernel 3, stride 2, padding 1
        with grad_context(encoder):
            # Positions past each row's end are zeroed before every conv, so the convs see exactly the
            # zero padding they would see on the utterance alone.
            mel_mask = lengths_to_mask(mel_lengths, mel.shape[-1]).unsqueeze(1)
            hidden = nn.functional.gelu(encoder.conv1(mel.to(encoder.conv1.weight.dtype))) * mel_mask
            hidden = nn.functional.gelu(encoder.conv2(hidden)).transpose(1, 2)
            num_frames = hidden.shape[1]
            hidden = hidden + encoder.embed_positions.weight[:num_frames]
            hidden = nn.functional.dropout(hidden, p=encoder.dropout, training=encoder.training)
            frame_mask = lengths_to_mask(frame_lengths, num_frames)
            attention_bias = _key_padding_bias(frame_mask, hidden.dtype)
            states = [hidden]
            for layer in encoder.layers:  # no LayerDrop: encoder_layerdrop is 0 in released Whisper configs
                states.append(self._run_layer(layer, states[-1], attention_bias))
            states[-1] = encoder.layer_norm(states[-1])
        if self.window_samples:
            # The frames of the real audio: the same length arithmetic on the unpadded clip (at least one).
            real_lengths = ((sample_lengths // HOP_LENGTH - 1) // 2 + 1).clamp(min=1)
            frame_mask = lengths_to_mask(real_lengths, num_frames)
        return stack_layers(states if self.layer_weights is not None else states[-1:]), frame_mask

    def _run_layer(self, layer: nn.Module, hidden: Tensor, attention_bias: Tensor) -> Tensor:
        if self.gradient_checkpointing and torch.is_grad_enabled():
            # Our own checkpoint call, not transformers' layer flag: that one is off in eval mode, and a
            # frozen encoder with LoRA adapters trains in eval mode.
            return checkpoint(layer, hidden, attention_bias, use_reentrant=False)
        return layer(hidden, attention_bias)


def _check_window(window_s: float, max_mel_frames: int) -> None:
    """A fixed window must be non-negative and fit the position embeddings.

    Raises:
        SertoolError: naming ``--whisper-window-s`` and the longest window allowed.
    """
    if window_s < 0 or round(window_s * SAMPLE_RATE) // HOP_LENGTH > max_mel_frames:
        raise SertoolError(f"--whisper-window-s {window_s:g}: give 0 or a window of at most "
                           f"{max_mel_frames * HOP_LENGTH / SAMPLE_RATE:g} s (the position embeddings end there)")


def _key_padding_bias(frame_mask: Tensor, dtype: torch.dtype) -> Tensor:
    """``[B, T]`` frame mask → ``[B, 1, T, T]`` additive attention bias: 0 on real keys, -inf-like on padding.

    Only keys are masked: a padded query still sees the real keys, so no softmax row is empty.
    """
    bias = torch.zeros(frame_mask.shape, dtype=dtype, device=frame_mask.device)
    bias = bias.masked_fill(~frame_mask, torch.finfo(dtype).min)
    num_frames = frame_mask.shape[1]
    return bias[:, None, None, :].expand(-1, 1, num_frames, num_frames)


def load_whisper(
    name_or_path: str,
    *,
    layer_weighting: str,
    frozen: bool,
    freeze_feature_encoder: bool,
    lora: SpeechLoRA | None = None,
    window_s: float = 0.0,
    gradient_checkpointing: bool = False,
    pretrained_weights: bool = True,
    option: str = CLI_SPELLING.name("backbone_path"),
) -> WhisperBackbone:
    """Load the encoder of any Whisper checkpoint (hub id or local folder) in float32.

    The checkpoint is loaded as ``WhisperForAudioClassification``, whose only pretrained part is the
    encoder: transformers reads just the encoder's tensors and skips the decoder's. The small random
    projector and classifier that class adds are dropped. With ``pretrained_weights=False`` only the
    config is read and the encoder's weights are random, for a stored state to replace; its position
    table then covers ``window_s`` when given (the shape a model trained with that window stores). ``option``
    is how the caller names the model's location (``--backbone-path``, or ``backbone_path=`` in Python:
    ``sertool.core.hub.OptionSpelling``), for the messages.

    Raises:
        SertoolError: the model cannot be loaded, is not a Whisper model, or holds no encoder weights
            (naming ``option``).
    """
    from transformers import AutoConfig, WhisperForAudioClassification

    where = spelled(option, name_or_path)
    config = load_pretrained(AutoConfig.from_pretrained, name_or_path, flag=option)
    if config.model_type != "whisper":
        raise SertoolError(f"{where}: a {config.model_type} model, not Whisper; this backbone needs a Whisper model")
    if not pretrained_weights:
        from transformers.models.whisper.modeling_whisper import WhisperEncoder

        if window_s:
            _check_window(window_s, 2 * int(config.max_source_positions))
            config.max_source_positions = round(window_s * SAMPLE_RATE) // HOP_LENGTH // 2
        encoder = WhisperEncoder(config).float()
        return WhisperBackbone(encoder, layer_weighting=layer_weighting, frozen=frozen,
                               freeze_feature_encoder=freeze_feature_encoder, lora=lora, window_s=window_s,
                               gradient_checkpointing=gradient_checkpointing)
    with _quiet_transformers():  # its load report would list every skipped decoder tensor
        # output_loading_info=True makes from_pretrained return (model, info), which its annotation does not say.
        model, loading_info = cast(tuple[WhisperForAudioClassification, dict[str, Any]], load_pretrained(
            WhisperForAudioClassification.from_pretrained,
            name_or_path,
            flag=option,
            config=config,
            dtype=torch.float32,
            output_loading_info=True,
        ))
    missing = sorted(key for key in loading_info["missing_keys"] if key.startswith("encoder."))
    if missing:
        raise SertoolError(f"{where}: holds no Whisper encoder weights (e.g. {missing[0]})")
    return WhisperBackbone(
        model.encoder,
        layer_weighting=layer_weighting,
        frozen=frozen,
        freeze_feature_encoder=freeze_feature_encoder,
        lora=lora,
        window_s=window_s,
        gradient_checkpointing=gradient_checkpointing,
    )


@contextmanager
def _quiet_transformers() -> Iterator[None]:
    """Silence transformers' warnings for the duration (errors still raise)."""
    logger = logging.getLogger("transformers")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)
