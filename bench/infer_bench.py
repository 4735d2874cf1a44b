"""Benchmarks 3, 4 and 10: Whisper at real length, length-sorted inference batches, int8 CPU inference."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from measure import Figure, Target, interleaved, median, ratio_of_rounds, timed
from sertool.core.config import DEFAULT_EVAL_BATCH_S, ModelConfig
from sertool.data.audio import SAMPLE_RATE
from sertool.data.records import Utterance
from sertool.models.backbones.whisper import HOP_LENGTH, WhisperBackbone
from sertool.models.ser_model import SERModel
from sertool.runtime.batching import length_sorted_batches
from sertool.runtime.runner import run_model
from sertool.training.samplers import padding_efficiency

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

    durations_s = np.array([utt.duration_s for utt in utterances])
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
                 "max_abs_prediction_difference": difference,
                 # One clip per batch pads nothing (1.0); the length-sorted batches pad a little.
                 "padding_efficiency": {"batched": round(padding_efficiency(
                     length_sorted_batches(durations_s, max_batch_s=DEFAULT_EVAL_BATCH_S), durations_s), 4),
                     "one_at_a_time": 1.0}},
    )


# ---------------------------------------------------------------------------------------------------------
# 10. CPU inference: int8 dynamic quantisation of the linear layers vs float32.

QUANTIZE_SPEEDUP_TARGET = 1.8  # on the WavLM-Base-sized model
QUANTIZE_CCC_TARGET = 0.99  # agreement of the quantised predictions with the float32 ones


def save_base_sized_wavlm(folder: Path) -> Path:
    """A random WavLM the size of WavLM-Base (transformers' default config: 12 layers of 768, 3072-wide
    feed-forward, 12 heads, the 512-channel convolutional encoder; 94 M parameters), saved to ``folder``.
    Nothing is downloaded."""
    from transformers import Wav2Vec2FeatureExtractor, WavLMConfig, WavLMModel

    with torch.random.fork_rng():
        torch.manual_seed(0)
        WavLMModel(WavLMConfig()).save_pretrained(folder)
    Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=SAMPLE_RATE, padding_value=0.0, do_normalize=False,
                             return_attention_mask=True).save_pretrained(folder)
    return folder


def quantized_inference(utterances: Sequence[Utterance], config: ModelConfig, *, name: str, rounds: int,
                        target: float | None) -> Figure:
    """Utterances/s of ``run_model`` on the CPU with the float32 model vs its int8-quantised copy
    (``sertool.acceleration.cpu.quantize_int8``, what ``--quantize int8`` runs). The row also gives how far
    the predictions of these random heads moved (max absolute difference on the 1–7 scale); agreement is
    measured where predictions vary as a trained model's do (``quantized_agreement_*``)."""
    import copy

    from sertool.acceleration.cpu import quantize_int8

    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = SERModel(config).eval()
    models = {"float32": model, "int8": quantize_int8(copy.deepcopy(model))}
    device = torch.device("cpu")
    values = {}
    for label, variant in models.items():  # warm-up, and the predictions compared
        raw = run_model(variant, utterances, device=device)
        values[label] = variant.label_scaling.ratings(raw.emotion_unit)

    def run(label: str):
        return lambda _: timed(lambda: run_model(models[label], utterances, device=device))[0]

    seconds = interleaved({label: run(label) for label in models}, rounds=rounds)
    ratio, per_round = ratio_of_rounds(seconds["float32"], seconds["int8"])
    difference = float(np.abs(values["int8"] - values["float32"]).max())
    audio_s = sum(utt.duration_s for utt in utterances)
    details = {"seconds": {k: [round(s, 3) for s in v] for k, v in seconds.items()}, "per_round_ratio": per_round,
               "utterances_per_s": {k: round(len(utterances) / median(v), 2) for k, v in seconds.items()},
               "max_abs_difference_1_to_7": round(difference, 4),
               "prediction_spread_1_to_7": [round(float(x), 4) for x in values["float32"].std(axis=0)],
               **_int8_setting()}
    return Figure(key=f"quantize_speed_{name.replace(' ', '_')}", benchmark=f"10. CPU inference int8, {name}",
                  value=ratio, unit="×", target=Target(">=", target) if target else None,
                  compared=(f"utterances/s of run_model on the CPU, {len(utterances)} clips ({audio_s:.0f} s of "
                            f"audio): --quantize int8 vs float32 (random heads: predictions differ by ≤ "
                            f"{difference:.3f} on the 1–7 scale)"),
                  details=details)


def trained_tiny_wavlm(folder: Path, wavlm_dir: Path, *, train_clips: int, test_clips: int,
                       epochs: int) -> tuple[Path, list[Utterance]]:
    """A tiny WavLM system trained here (``sertool train``'s code) on a corpus whose arousal and dominance shape
    the audio (loudness, pitch), and its held-out Development clips; trained once per ``folder`` (benchmarks
    10 and 12 share it)."""
    from sertool.inference.inputs import corpus_split
    from sertool.training.loop import train
    from tests.corpus_files import write_learnable_corpus
    from tests.systems import small_config

    corpus = folder / "corpus"
    if not (folder / "run" / "best.pt").is_file():
        write_learnable_corpus(corpus, per_split={"Train": train_clips, "Development": test_clips})
        config = small_config(corpus, epochs=epochs)
        config.model.backbone = "wavlm"
        config.model.backbone_path = str(wavlm_dir)
        train(config, folder / "run", device="cpu")
    return folder / "run", corpus_split(corpus, "Development")[0]


def quantized_agreement_trained(folder: Path, wavlm_dir: Path, *, train_clips: int, test_clips: int,
                                epochs: int) -> Figure:
    """CCC of int8 against float32 predictions of a tiny WavLM system trained here (``trained_tiny_wavlm``), on
    its held-out Development clips, through ``sertool.load(..., quantize=...)`` as a user would run it."""
    import sertool

    run_dir, utterances = trained_tiny_wavlm(folder, wavlm_dir, train_clips=train_clips, test_clips=test_clips,
                                             epochs=epochs)
    paths = [utt.audio_path for utt in utterances]
    values = {label: sertool.load(run_dir, device="cpu", quantize=quantize).predict(paths, table=True).values
              for label, quantize in (("float32", "off"), ("int8", "int8"))}
    labels = np.array([[utt.arousal, utt.valence, utt.dominance] for utt in utterances])
    return _agreement_figure(values, key="quantize_agreement_tiny_WavLM_trained",
                             name="tiny WavLM trained here",
                             what=(f"a tiny WavLM system trained for {epochs} epochs on {train_clips} clips whose "
                                   f"arousal/dominance set their loudness/pitch; its {len(utterances)} held-out "
                                   "Development clips"),
                             targets=labels)


def quantized_agreement_readout(fit: Sequence[Utterance], test: Sequence[Utterance], config: ModelConfig, *,
                                name: str) -> Figure:
    """CCC of int8 against float32 predictions of the random encoder ``config`` (WavLM-Base-sized in the bench) (and sertool's
    attentive pooling) with its heads replaced by a linear read-out fitted by ridge least squares on the
    float32 pooled features of the ``fit`` clips, to targets computed from each clip's audio (loudness,
    zero-crossing rate, share of quiet 20-ms frames, each standardised over the fit clips to mean 4 and
    sd 0.8 on the 1–7 scale); the figure is on the ``test`` clips, which the fit never saw. A read-out of
    what varies between clips, as a trained head is: random heads barely tell clips apart, which would make
    any CCC small."""
    import copy

    from sertool.acceleration.cpu import quantize_int8
    from sertool.data.audio import load_audio

    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = SERModel(config).eval()
    models = {"float32": model, "int8": quantize_int8(copy.deepcopy(model))}

    def pooled(variant: SERModel, clips: Sequence[Utterance]) -> np.ndarray:
        rows = []
        with torch.inference_mode():
            for utt in clips:  # one clip at a time: the group-norm front end pads nothing
                waveform = load_audio(utt.audio_path).unsqueeze(0)
                frames, frame_mask = variant.backbone(waveform, torch.ones_like(waveform, dtype=torch.bool))
                rows.append(variant.pooling(frames, frame_mask)[0].double().numpy())
        return np.stack(rows)

    def descriptors(clips: Sequence[Utterance]) -> np.ndarray:
        rows = []
        for utt in clips:
            audio = load_audio(utt.audio_path).double().numpy()
            frame_energy = audio[: audio.size // 320 * 320].reshape(-1, 320).std(axis=1)
            rows.append([np.log(audio.std() + 1e-9), np.mean(np.abs(np.diff(np.sign(audio))) > 0),
                         np.mean(frame_energy < 0.5 * np.median(frame_energy))])
        return np.array(rows)

    fit_features, fit_descriptors = pooled(model, fit), descriptors(fit)
    mean, sd = fit_descriptors.mean(axis=0), fit_descriptors.std(axis=0)
    targets = {"fit": 4.0 + 0.8 * (fit_descriptors - mean) / sd,
               "test": 4.0 + 0.8 * (descriptors(test) - mean) / sd}
    centre = fit_features.mean(axis=0)
    centred = fit_features - centre
    ridge = 1e-2 * float((centred ** 2).sum()) / len(fit)  # a light ridge: more features than clips
    weights = np.linalg.solve(centred.T @ centred + ridge * np.eye(centred.shape[1]),
                              centred.T @ (targets["fit"] - 4.0))
    values = {label: 4.0 + (pooled(variant, test) - centre) @ weights for label, variant in models.items()}
    return _agreement_figure(values, key=f"quantize_agreement_{name.replace(' ', '_')}",
                             name=f"{name}, fitted read-out",
                             what=(f"the {name} random encoder with a ridge read-out fitted on the float32 "
                                   f"pooled features of {len(fit)} other clips to audio descriptors (loudness, "
                                   f"zero crossings, quiet frames; sd 0.8 on the 1–7 scale); {len(test)} clips"),
                             targets=targets["test"])


def _agreement_figure(values: dict[str, np.ndarray], *, key: str, name: str, what: str,
                      targets: np.ndarray) -> Figure:
    """The lowest per-attribute CCC of ``values["int8"]`` against ``values["float32"]``, with the max absolute
    difference, the float32 predictions' spread and how well they follow ``targets`` beside it."""
    from sertool.models.ccc import ccc_scores

    agreement = ccc_scores(values["int8"], values["float32"])
    difference = float(np.abs(values["int8"] - values["float32"]).max())
    spread = values["float32"].std(axis=0)
    details = {"ccc_int8_vs_float32": agreement, "max_abs_difference_1_to_7": round(difference, 4),
               "rms_difference_1_to_7": [round(float(x), 4) for x in
                                         np.sqrt(((values["int8"] - values["float32"]) ** 2).mean(axis=0))],
               "prediction_spread_1_to_7": [round(float(x), 4) for x in spread],
               "ccc_float32_vs_targets": ccc_scores(values["float32"], targets), "clips": len(targets),
               **_int8_setting()}
    return Figure(key=key, benchmark=f"10. int8 vs float32 predictions, {name}",
                  value=min(value for attribute, value in agreement.items() if attribute != "average"), unit="",
                  target=Target(">=", QUANTIZE_CCC_TARGET),
                  compared=(f"lowest per-attribute CCC of int8 against float32 predictions: {what}; max absolute "
                            f"difference {difference:.3f}, float32 predictions' sd "
                            f"{' / '.join(f'{x:.2f}' for x in spread)} (A / V / D) on the 1–7 scale"),
                  details=details)


def _int8_setting() -> dict[str, object]:
    from sertool.acceleration.bf16_front_end import has_amx_bf16
    from sertool.acceleration.cpu import _int8_engine

    return {"torch_threads": torch.get_num_threads(), "quantized_engine": _int8_engine(),
            "bf16_front_end": has_amx_bf16()}
