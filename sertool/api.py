"""sertool's Python API: load any model, predict arousal, valence and dominance of speech.

    >>> import sertool
    >>> model = sertool.load("runs/demo")  # a run folder, checkpoint, model folder, ensemble JSON or hub id
    >>> prediction = model.predict("talk.wav")
    >>> sorted(prediction)
    ['arousal', 'dominance', 'valence']
    >>> all(1 <= value <= 7 for value in prediction.values())  # MSP-Podcast's 1-7 rater scale, always
    True

``load`` opens a model through the same function every command uses (``open_predictor``) and
``Model.predict`` runs the same function as `sertool predict` (``inference.workflows.predict_with``): long
audio is cut into the same windows, any rate and channel count is read at 16 kHz mono the same way, and
the numbers are the CLI's. ``import sertool`` stays light: this module (and torch) loads on first use of
``sertool.load``.
"""
from __future__ import annotations

import functools
import numbers
import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar, Union

import numpy as np

from sertool.core.config import (
    DEFAULT_AMP,
    DEFAULT_ASR_MODEL_ID,
    DEFAULT_DEVICE,
    DEFAULT_EVAL_BATCH_S,
    DEFAULT_QUANTIZE,
    check_options,
    check_value,
)
from sertool.core.errors import SertoolError
from sertool.core.hub import API_SPELLING
from sertool.core.io import SeenIds
from sertool.data.audio import MAX_SAMPLE_RATE, MIN_SAMPLE_RATE
from sertool.data.records import Utterance
from sertool.guards.surface import as_sertool_error
from sertool.inference.options import PredictOptions
from sertool.inference.predictions import SCALE_RATINGS, SCALE_UNIT, Predictions
from sertool.inference.predictor import (
    InferenceOptions,
    Predictor,
    on_scale,
    open_predictor,
    unit_scaling,
)

# One input: a path to an audio file, or a waveform (a numpy array or a torch tensor) with sample_rate.
Audio = Union[str, os.PathLike, np.ndarray, Any]
Function = TypeVar("Function", bound=Callable[..., Any])


def _surfaced(function: Function) -> Function:
    """Raise the failures a caller can act on (no memory, a full disk, no CUDA, ...) as ``SertoolError`` with
    the CLI's one-line message (``guards.surface``), the original chained; anything else as it is."""
    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        try:
            return function(*args, **kwargs)
        except SertoolError:
            raise
        except Exception as error:  # noqa: BLE001 - re-raised: converted when known, else unchanged
            known = as_sertool_error(error)
            if known is None:
                raise
            raise known from error
    return wrapper  # type: ignore[return-value]


@_surfaced
def load(
    model: str | os.PathLike,
    *,
    device: str = DEFAULT_DEVICE,
    backbone_path: str | None = None,
    text_model: str | None = None,
    speaker_embedding: str | None = None,
    asr: str = DEFAULT_ASR_MODEL_ID,
    cache_dir: str | None = None,
    max_batch_s: float = DEFAULT_EVAL_BATCH_S,
    amp: str = DEFAULT_AMP,
    quantize: str = DEFAULT_QUANTIZE,
    threads: int = 0,
) -> Model:
    """Open a model for prediction.

    The model is built on the first ``predict`` and kept, so load once and predict many times. The pretrained
    models it is built from (its speech backbone, an MM model's text encoder, a +S Emb model's speaker model)
    are looked for now: one that is neither here nor downloadable is refused here, naming the files needed and
    the argument that gives a folder (``backbone_path=``, ``text_model=``, ``speaker_embedding=``). Every
    message, here or at the first ``predict``, names these arguments as Python spells them, not as the CLI's
    flags.

    Args:
        model: a run folder (its ``best.pt``), a checkpoint, a model folder (``sertool export``, or one of
            the authors' released models), a saved ensemble (``.json``) or a model hub id
            (``owner/name``, e.g. ``tiantiaf/wavlm-large-msp-podcast-emotion-dim``).
        device: "auto" (a GPU if there is one), "cpu" or "cuda".
        backbone_path: where the model's speech backbone lives here (hub id or folder), if not where it
            was recorded; e.g. a local folder on an offline machine.
        text_model: the same for the text encoder of an MM model.
        speaker_embedding: the same for the speaker model of a +S Emb model.
        asr: Whisper model that transcribes audio for MM models when no transcript is given.
        cache_dir: cache of text embeddings and transcripts (default: ``$SERTOOL_CACHE`` or
            ``~/.cache/sertool``).
        max_batch_s: inference batch bound, utterances × longest clip in seconds (speed only: batching
            never changes a prediction).
        amp: mixed precision: "auto" (bf16/fp16 on GPUs, off on the CPU), "bf16", "fp16" or "off".
        quantize: "int8": int8 linear layers in the speech backbone, and its convolutional front end in
            bf16 on CPUs with AMX; faster on a CPU (how much: docs/performance.md, benchmark 10), predictions
            within a few hundredths (CPU only; the files on disk are not changed); "off".
        threads: torch's CPU threads for this process (0: torch's default, one per core).

    Returns:
        A ``Model``.

    Raises:
        SertoolError: an option outside the values the CLI's flag allows (naming it), nothing loadable at
            ``model``, or a pretrained model it is built from (speech backbone, text encoder, speaker model)
            neither here nor downloadable (the message names it and what to do); a known failure (no memory, no
            CUDA, ...) as one line.

    Examples:
        >>> model = sertool.load("runs/demo")
        >>> model.name
        'runs/demo'
        >>> sertool.load("missing.pt")
        Traceback (most recent call last):
        ...
        sertool.core.errors.SertoolError: missing.pt: no such checkpoint, run folder, model folder, ...
    """
    options = InferenceOptions(device=device, max_batch_s=max_batch_s, amp=amp, cache_dir=_text(cache_dir),
                               backbone_path=_text(backbone_path), text_model=_text(text_model),
                               speaker_embedding=_text(speaker_embedding), asr=_text(asr), quantize=quantize,
                               threads=threads)
    check_options(options, source="sertool.load")  # the declarations the CLI's flags are built from
    options.torch_device()  # a device that is not there is refused now, not at the first prediction
    return Model(open_predictor(os.fspath(model), options, spelling=API_SPELLING))


def _text(location: Any) -> Any:
    """A folder given as a ``Path`` as the string the options declare; anything else as it is (then checked)."""
    return os.fspath(location) if isinstance(location, os.PathLike) else location


class Model:
    """A model opened by ``sertool.load``: ``predict`` gives A/V/D on the 1–7 scale.

    Attributes:
        name: what it was loaded from.
        attributes: what it predicts, e.g. ``("arousal", "valence", "dominance")``, or ``("valence",)`` for a
            system of one attribute (``train --attributes``).
    """

    def __init__(self, predictor: Predictor) -> None:
        self._predictor = predictor
        self.name = predictor.name
        self.attributes = predictor.attributes

    def __repr__(self) -> str:
        return f"sertool.Model({self.name!r})"

    @classmethod
    def from_pretrained(cls, model: str | os.PathLike, **options: Any) -> Model:
        """``sertool.load`` under the name the model hub's users know: ``Model.from_pretrained("owner/name")``
        takes the same arguments and returns the same ``Model``."""
        return load(model, **options)

    @_surfaced
    def predict(
        self,
        audio: Audio | Sequence[Audio],
        *,
        sample_rate: int | None = None,
        window_s: float | None = None,
        hop_s: float | None = None,
        transcripts: str | Sequence[str | None] | None = None,
        table: bool = False,
        scale: str = SCALE_RATINGS,
    ) -> dict[str, float] | list[dict[str, float]] | Predictions:
        """Arousal, valence and dominance of speech, on MSP-Podcast's 1–7 rater scale (or the model's 0..1).

        Args:
            audio: one input or a list of inputs. An input is a path to an audio file (any format and rate
                libsndfile reads), or a waveform — a numpy array or torch tensor, 1-D, or 2-D with the
                channels on the shorter axis (``[channels, samples]`` or ``[samples, channels]``) — given
                with ``sample_rate``. Everything is read as 16-kHz mono (resampled, channels averaged).
            sample_rate: the rate of waveform inputs, in Hz (files carry their own).
            window_s: inputs longer than this are cut into windows of this length (default: the clip length
                the model was made for, its training crop, e.g. 15 s for the authors' released models; else
                ``DEFAULT_WINDOW_S``, 10 s)...
            hop_s: ...starting this many seconds apart (default: ``DEFAULT_HOP_S``, 5 s, or the window if
                shorter); an input's value is the duration-weighted mean of its windows (as `sertool predict`).
            transcripts: for MM (text) models: the transcript of each input (a string for one input, a list
                for a list; None entries are transcribed by ASR).
            table: return a ``Predictions`` table instead of dicts: ``ids`` (the paths as given, or
                ``waveform[i]``), ``values`` ``[N, 3]`` (A, V, D; a system of fewer attributes, ``train
                --attributes``, has a column per attribute of its ``attributes``) and ``segments`` (one per window
                of a long input: ``start_s``, ``end_s``, ``values``).
            scale: ``"ratings"``: MSP-Podcast's 1–7 rater scale; ``"unit"``: the model's own 0..1 outputs,
                ``(rating − 1) / 6`` (for the authors' released models their raw sigmoid outputs, before
                sertool's inferred ``1 + 6·y``); the table's ``scale`` says which. Not for a predictions CSV.

        Returns:
            ``{"arousal": a, "valence": v, "dominance": d}`` for one input (those the model predicts); a list of
            them, in input order, for a list; the ``Predictions`` table with ``table=True``.

        Raises:
            SertoolError: a missing or unreadable file, a folder, a waveform without ``sample_rate`` (or
                a file with one, or one outside 4-384 kHz), an empty, non-finite, non-float or too short
                waveform, the same file twice, a ``window_s`` or ``hop_s`` outside what `sertool predict`
                allows; a known failure (no memory, ...) as one line. A message about a waveform names it
                ``waveform[i]``.

        Examples:
            >>> model = sertool.load("runs/demo")
            >>> rows = model.predict(["a.wav", "b.wav"])
            >>> [sorted(row) for row in rows] == [["arousal", "dominance", "valence"]] * 2
            True

            A waveform is predicted exactly like the file it came from:

            >>> import soundfile
            >>> waveform, rate = soundfile.read("talk.wav", dtype="float32")
            >>> model.predict(waveform, sample_rate=rate) == model.predict("talk.wav")
            True

            ``talk.wav`` lasts 25 s: four 10-s windows, 5 s apart (the last one ends with the file):

            >>> table = model.predict("talk.wav", window_s=10.0, table=True)
            >>> table.ids, table.values.shape
            (['talk.wav'], (1, 3))
            >>> [(segment.start_s, segment.end_s) for segment in table.segments]
            [(0.0, 10.0), (5.0, 15.0), (10.0, 20.0), (15.0, 25.0)]
        """
        window_s = check_value(PredictOptions, "window_s", window_s, source="predict")  # None: the model's
        scale = check_value(PredictOptions, "scale", scale, source="predict")
        if scale == SCALE_UNIT:
            unit_scaling(self._predictor)  # a predictions CSV has none: refused before any work
        hop_s = check_value(PredictOptions, "hop_s", hop_s, source="predict")
        single = not isinstance(audio, (list, tuple))
        items = list(audio) if isinstance(audio, (list, tuple)) else [audio]
        if not items:
            raise SertoolError("predict: no audio given")
        texts = _per_input(transcripts, len(items), single=single)
        with tempfile.TemporaryDirectory(prefix="sertool-") as scratch:
            # Every reader downstream names the file it reads; a waveform's file is this call's own business.
            as_given = {str(_waveform_file(Path(scratch), index)): _waveform_name(index, single=single)
                        for index, item in enumerate(items) if not isinstance(item, (str, os.PathLike))}
            try:
                utterances = [_utterance(item, index, single=single, sample_rate=sample_rate, scratch=Path(scratch))
                              for index, item in enumerate(items)]
                _check_distinct(utterances)
                utterances = [replace(utt, transcript=text) if text is not None else utt
                              for utt, text in zip(utterances, texts, strict=True)]
                from sertool.inference.workflows import predict_with

                predictions = on_scale(predict_with(self._predictor, utterances, window_s=window_s, hop_s=hop_s),
                                       self._predictor, scale)
            except SertoolError as error:
                raise SertoolError(_named_as_given(str(error), as_given)) from None
        if table:
            return predictions
        rows = [{name: float(value) for name, value in zip(predictions.attributes, row, strict=True)}
                for row in predictions.values]
        return rows[0] if single else rows


def _utterance(item: Audio, index: int, *, single: bool, sample_rate: int | None, scratch: Path) -> Utterance:
    """One input as an utterance: a file as it is; a waveform written losslessly (32-bit float WAV) to a
    temporary file, so that it is read, resampled, downmixed and windowed exactly as a file is."""
    from sertool.inference.inputs import audio_file_utterance

    if isinstance(item, (str, os.PathLike)):
        path = Path(item).expanduser()
        if sample_rate is not None:
            raise SertoolError(f"{path}: sample_rate= applies to waveforms; an audio file carries its own rate")
        if path.is_dir():
            raise SertoolError(f"{path}: a folder; pass its audio files, e.g. sorted(Path(folder).glob('*.wav'))")
        return audio_file_utterance(path, os.fspath(item))
    name = _waveform_name(index, single=single)
    data = _as_frames(item, name=name)
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, numbers.Integral) or sample_rate <= 0:
        raise SertoolError(f"{name}: give its rate in Hz as sample_rate= (an integer), got {sample_rate!r}")
    if not MIN_SAMPLE_RATE <= sample_rate <= MAX_SAMPLE_RATE:
        raise SertoolError(f"{name}: sample_rate={sample_rate} Hz is outside the {MIN_SAMPLE_RATE:,}–"
                           f"{MAX_SAMPLE_RATE:,} Hz of speech recordings; give the rate the samples were recorded at")
    import soundfile

    path = _waveform_file(scratch, index)
    soundfile.write(str(path), data, int(sample_rate), subtype="FLOAT")
    return audio_file_utterance(path, name)


def _waveform_name(index: int, *, single: bool) -> str:
    """How ids and messages name a waveform input: ``waveform``, or ``waveform[i]`` in a list."""
    return "waveform" if single else f"waveform[{index}]"


def _waveform_file(scratch: Path, index: int) -> Path:
    """The temporary file the waveform input ``index`` is written to."""
    return scratch / f"{index}.wav"


def _named_as_given(message: str, as_given: dict[str, str]) -> str:
    """``message`` with each temporary waveform file replaced by the waveform's name (``waveform[1]``): the
    user never saw the file, and it is gone when the message is read."""
    for path, name in as_given.items():
        message = message.replace(path, name)
    return message


def _as_frames(item: Any, *, name: str) -> np.ndarray:
    """A waveform as float32 ``[samples]`` or ``[samples, channels]`` (soundfile's layout).

    Raises:
        SertoolError: not an array, not 1-D or 2-D, empty or non-finite.
    """
    if hasattr(item, "detach"):  # a torch tensor, without importing torch for the check
        item = item.detach().cpu().numpy()
    if not isinstance(item, np.ndarray):
        raise SertoolError(f"{name}: an input must be a path to an audio file or a waveform (numpy array or torch "
                           f"tensor), got {type(item).__name__}")
    if not np.issubdtype(item.dtype, np.floating):
        raise SertoolError(f"{name}: give float samples in [-1, 1] (e.g. int16 samples / 32768), got {item.dtype}")
    if item.ndim not in (1, 2) or item.size == 0:
        raise SertoolError(f"{name}: a waveform must be 1-D or 2-D (channels on the shorter axis) and not empty, got "
                           f"shape {item.shape}")
    data = item.astype(np.float32)
    if not np.isfinite(data).all():
        raise SertoolError(f"{name}: the waveform contains NaN or infinite samples")
    return data.T if data.ndim == 2 and data.shape[0] < data.shape[1] else data


def _per_input(transcripts: str | Sequence[str | None] | None, count: int, *, single: bool) -> list[str | None]:
    if transcripts is None:
        return [None] * count
    if isinstance(transcripts, str):
        if not single:
            raise SertoolError("transcripts: give a list with one transcript per input")
        return [transcripts]
    texts = list(transcripts)
    if len(texts) != count:
        raise SertoolError(f"transcripts: {len(texts)} transcripts for {count} inputs")
    return texts


def _check_distinct(utterances: Sequence[Utterance]) -> None:
    """Refuse an input given twice: its two rows of the result could not be told apart."""
    seen = SeenIds("input")
    for index, utt in enumerate(utterances):
        seen.refuse_repeat(utt.id, f"audio[{index}]", fix="pass each file once")
