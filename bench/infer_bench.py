"""Benchmarks 3 and 4: Whisper at real length, and length-sorted inference batches."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from measure import Figure, Target, interleaved, median, ratio_of_rounds, timed
from sertool.config import DEFAULT_EVAL_BATCH_S, ModelConfig
from sertool.data.audio import SAMPLE_RATE
from sertool.data.records import Utterance
from sertool.runtime.runner import run_model
from sertool.models.backbones.whisper import HOP_LENGTH, WhisperBackbone
from sertool.models.ser_model import SERModel

# A Whisper small enough for a CPU, large enough that the encoder's compute dominates (not Python).
WHISPER_SIZES = dict(d_model=256, encoder_layers=4, encoder_attention_heads=4, encoder_ffn_dim=1024, num_mel_bins=80)
# A bound below every clip's duration: each clip then forms a batch of its own (one at a time).
ONE_AT_A_TIME_S = 1e-3


def tiny_whisper_encoder() -> torch.nn.Module:
    """A random ``WhisperEncoder`` of ``WHISPER_SIZES`` with the real 30-s window (1500 frames)."""
    from transformers import WhisperConfig
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    config = WhisperConfig(vocab_size=64, max_source_positions=1500, decoder_layers=1, decoder_attention_heads=4,
                           decoder_ffn_dim=256, max_target_positions=32, pad_token_id=0, bos_token_id=1,
                           eos_token_id=2, decoder_start_token_id=1, **WHISPER_SIZES)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return WhisperEncoder(config).eval()


@torch.no_grad()
def whisper_real_length(*, rounds: int, best_of: int, batch_size: int = 2, duration_s: float = 6.0) -> Figure:
    """sertool's ``WhisperBackbone`` on 6-s clips at their real length vs transformers' encoder on 30 s.

    Both variants include the log-mel front end (sertool's, which computes ``WhisperFeatureExtractor``'s
    features in torch): on the clip itself, or on the clip zero-padded to 30 s as the feature extractor
    pads it. Both return every layer's states (what layer weighting needs).
    """
    encoder = tiny_whisper_encoder()
    backbone = WhisperBackbone(encoder, layer_weighting="weighted", frozen=True, freeze_feature_encoder=True).eval()
    samples = int(duration_s * SAMPLE_RATE)
    window_samples = backbone.max_mel_frames * HOP_LENGTH  # 30 s
    generator = torch.Generator().manual_seed(0)
    waveforms = 0.1 * torch.randn(batch_size, samples, generator=generator)
    sample_mask = torch.ones_like(waveforms, dtype=torch.bool)
    padded = torch.zeros(batch_size, window_samples)
    padded[:, :samples] = waveforms
    window_lengths = torch.full((batch_size,), window_samples)

    def real_length() -> None:
        backbone(waveforms, sample_mask)

    def padded_to_30_s() -> None:
        mel, _ = backbone.log_mel(padded, window_lengths)
        encoder(mel, output_hidden_states=True)

    real_length()
    padded_to_30_s()
    seconds = interleaved({"padded": lambda _: timed(padded_to_30_s)[0], "real": lambda _: timed(real_length)[0]},
                          rounds=rounds, best_of=best_of)
    ratio, per_round = ratio_of_rounds(seconds["padded"], seconds["real"])
    sizes = ", ".join(f"{key} {value}" for key, value in WHISPER_SIZES.items() if key != "num_mel_bins")
    return Figure(
        key="whisper_real_length",
        benchmark="3. Whisper encoder at real length",
        value=ratio, unit="×", target=Target(">=", 4.0),
        compared=(f"{batch_size} clips of {duration_s:g} s, random Whisper encoder ({sizes}): transformers' "
                  "WhisperEncoder on 3000 mel frames (30 s) vs sertool's WhisperBackbone at real length"),
        details={"seconds": {k: [round(s, 4) for s in v] for k, v in seconds.items()}, "per_round_ratio": per_round},
    )


def inference_batching(utterances: Sequence[Utterance], config: ModelConfig, *, name: str, rounds: int) -> Figure:
    """``run_model`` with length-sorted batches (``max_batch_s`` 120) vs one clip per batch, same code path."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = SERModel(config).eval()
    device = torch.device("cpu")
    run_model(model, utterances[:2], device=device)  # warm-up
    outputs = {}

    def run(max_batch_s: float, label: str):
        def measure(_: int) -> float:
            seconds, outputs[label] = timed(lambda: run_model(model, utterances, device=device, max_batch_s=max_batch_s))
            return seconds
        return measure

    seconds = interleaved({"one_at_a_time": run(ONE_AT_A_TIME_S, "one_at_a_time"),
                           "batched": run(DEFAULT_EVAL_BATCH_S, "batched")}, rounds=rounds)
    ratio, per_round = ratio_of_rounds(seconds["one_at_a_time"], seconds["batched"])
    # Batching must not change a prediction (masks); a large difference would make the speed-up meaningless.
    difference = float(np.abs(outputs["batched"].emotion_unit - outputs["one_at_a_time"].emotion_unit).max())
    return Figure(
        key=f"inference_batching_{name}",
        benchmark=f"4. inference batching, {name}",
        value=ratio, unit="×", target=Target(">=", 5.0),
        compared=(f"run_model on the CPU over {len(utterances)} clips (2.75–11 s): one clip per batch vs length-sorted "
                  f"batches of ≤ {DEFAULT_EVAL_BATCH_S:g} padded s"),
        details={"seconds": {k: [round(s, 3) for s in v] for k, v in seconds.items()}, "per_round_ratio": per_round,
                 "utterances_per_s": {k: round(len(utterances) / median(v), 2) for k, v in seconds.items()},
                 "max_abs_prediction_difference": difference},
    )
