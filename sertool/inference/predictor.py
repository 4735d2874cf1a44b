"""Anything that predicts A/V/D for utterances: a checkpoint, a run folder, a model folder (sertool's or
the authors' released layout, or an ONNX graph) or its hub id, a predictions CSV, or a saved ensemble.
`evaluate`, `predict`, `ensemble` and ``sertool.load`` all go through ``open_predictor``, so each accepts all
of them.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from sertool.acceleration.cpu import check_quantize, quantize_int8
from sertool.core.config import DEFAULT_BACKBONE_IDS, QUANTIZE_INT8, Config, ModelConfig
from sertool.core.constants import BEST_NAME, MODEL_CONFIG_NAME
from sertool.core.devices import set_threads
from sertool.core.errors import SertoolError
from sertool.core.hub import CLI_SPELLING, OptionSpelling, check_available, is_repo_id, spelled
from sertool.data.records import Utterance
from sertool.data.selection import unknown_training_data
from sertool.inference.ensemble import apply_plan, check_coverage, read_plan
from sertool.inference.onnx_session import OnnxSession
from sertool.inference.options import InferenceOptions
from sertool.inference.predictions import (
    SCALE_RATINGS,
    SCALE_UNIT,
    Predictions,
    check_rating_scale,
    read_predictions,
)
from sertool.inference.windows import model_input_s, shortest_input_s
from sertool.models.asr import Transcriber, fill_transcripts
from sertool.models.heads import LabelScaling
from sertool.models.speaker_embedding import LOG_MEL_STATS
from sertool.runtime.precision import ieee_float32, resolve_amp
from sertool.runtime.runner import run_batches, run_model
from sertool.store.checkpoints import build_model, payload_attributes
from sertool.store.model_folder import load_model
from sertool.store.onnx_folder import fetch_onnx_folder, is_onnx_folder, read_onnx_folder

if TYPE_CHECKING:
    from sertool.cache.text_embeddings import TextEmbeddingCache
    from sertool.models.ser_model import SERModel


@dataclass
class PredictorOutput:
    """Predictions on the 1..7 scale, plus gender probabilities [N, 2] when a model has that head."""

    predictions: Predictions
    gender_probabilities: np.ndarray | None = None


class Predictor(Protocol):
    name: str
    # The attributes it predicts, in ATTRIBUTES order: all three, or those of a system of fewer (train.attributes),
    # a predictions file's columns, or what an ensemble's members cover.
    attributes: tuple[str, ...]
    # Ids of the utterances the model trained on (scores leave them out); None where unknown (a CSV).
    training_ids: frozenset[str] | None
    # The --init-from models behind it whose training data is unknown (scores say so); () where none or unknown.
    unknown_training_from: tuple[str, ...]
    # The clip length in seconds the model was made for (`predict`'s default window); None where unknown.
    input_s: float | None

    def predict(self, utterances: Sequence[Utterance]) -> PredictorOutput: ...


# What a model with its own backbone weights (the authors' releases, fine-tuned runs) reads of its speech
# backbone: ``AutoConfig`` for every family, and ``AutoFeatureExtractor`` (its ``do_normalize``) for the
# wav2vec2 family (``backbones.wav2vec2``); Whisper's front end is sertool's own.
PREPROCESSOR_CONFIG_NAME = "preprocessor_config.json"
BACKBONE_FILES: dict[str, tuple[str, ...]] = {
    "wavlm": (MODEL_CONFIG_NAME, PREPROCESSOR_CONFIG_NAME),
    "hubert": (MODEL_CONFIG_NAME, PREPROCESSOR_CONFIG_NAME),
    "wav2vec2": (MODEL_CONFIG_NAME, PREPROCESSOR_CONFIG_NAME),
    "whisper": (MODEL_CONFIG_NAME,),
}


def check_pretrained(model_config: ModelConfig, *, stored: bool, spelling: OptionSpelling, owner: str) -> None:
    """Refuse a pretrained model the model at ``owner`` is built from that is neither here nor downloadable:
    its speech backbone, its text encoder (``text``) and its speaker model (``speaker_embedding``), each named
    with what of it is needed (``sertool.core.hub.check_available``): the backbone's config files when the
    checkpoint stores its weights (``stored``), else the config, tokenizer or feature-extractor files and weights
    (frozen pretrained weights are not stored in checkpoints).

    Raises:
        SertoolError: ``sertool.core.hub.missing_model_message``, naming the option as ``spelling`` does.
    """
    name = model_config.backbone_path or DEFAULT_BACKBONE_IDS.get(model_config.backbone)
    if name is not None:  # fbank: nothing pretrained
        check_available(name, option=spelling.name("backbone_path"), owner=owner, what="speech backbone",
                        files=BACKBONE_FILES.get(model_config.backbone) if stored else None)
    if model_config.text:
        check_available(model_config.text_model, option=spelling.name("text_model"), files=None, owner=owner,
                        what="text encoder")
    if model_config.speaker_embedding is not None and model_config.speaker_embedding != LOG_MEL_STATS:
        check_available(model_config.speaker_embedding, option=spelling.name("speaker_embedding"), files=None,
                        owner=owner, what="speaker model")


class CheckpointPredictor:
    """A trained model, rebuilt on first use from its checkpoint, run folder, model folder or hub id."""

    def __init__(self, path: str | Path, options: InferenceOptions, *,
                 spelling: OptionSpelling = CLI_SPELLING) -> None:
        """
        Args:
            spelling: how the caller names ``options``' fields (``--backbone-path``, or ``backbone_path=`` in
                Python), in every message about the pretrained models, when the model is opened or built.

        Raises:
            SertoolError: a damaged checkpoint, or a speech backbone, text encoder or speaker model that is
                neither here nor downloadable (``check_pretrained``): refused when the model is opened, not at
                its first prediction.
        """
        self.name = str(path)
        self.options = options
        self.spelling = spelling
        self.payload = load_model(path)
        damaged = [key for key in ("config", "model_state") if not isinstance(self.payload.get(key), dict)]
        if damaged:
            raise SertoolError(f"{path}: a damaged sertool checkpoint: it has no {' and no '.join(damaged)}")
        (self.attributes, self.training_ids, self.unknown_training_from, self.config, self.label_scaling,
         self.input_s) = described_model(self.payload, source=self.name)
        overrides = {key: getattr(options, key) for key in ("text_model", "speaker_embedding")
                     if getattr(options, key) is not None}
        if options.backbone_path is not None:
            overrides["backbone_path"] = options.backbone_path
        self.config.model = dataclasses.replace(self.config.model, **overrides)
        check_pretrained(self.config.model, stored=self.payload.get("backbone_weights", "published") != "published",
                         spelling=spelling, owner=self.name)
        self._model: SERModel | None = None
        # Kept across `predict` calls (`predict` streams long inputs in chunks): each reads its cache files
        # and loads the ASR weights once, not once per chunk.
        self._text_cache: TextEmbeddingCache | None = None
        self._transcripts = Transcripts(options, spelling)

    @property
    def model(self) -> SERModel:
        """The ``SERModel`` with the checkpoint's weights, in eval mode on the chosen device."""
        if self._model is None:
            model = build_model(self.payload, self.config.model, spelling=self.spelling, source=self.name)
            model = model.to(self.options.torch_device()).eval()
            if self.options.quantize == QUANTIZE_INT8:
                quantize_int8(model)  # in place, in memory only: the checkpoint is not touched
            self._model = model
        return self._model

    def predict(self, utterances: Sequence[Utterance]) -> PredictorOutput:
        from sertool.models.text_features import text_embedding_cache, transcript_embeddings

        model = self.model
        if self.config.model.text:
            utterances = self._transcripts.fill(utterances)
            if self._text_cache is None:
                self._text_cache = text_embedding_cache(model, self.options.cache_dir)
        device = self.options.torch_device()
        with ieee_float32(device):
            raw = run_model(model, utterances, device=device, description=f"predicting with {self.name}",
                            text_embeddings=transcript_embeddings(model, utterances, cache=self._text_cache),
                            max_batch_s=self.options.max_batch_s, num_workers=self.options.num_workers,
                            amp_dtype=resolve_amp(self.options.amp, device))
        values = model.label_scaling.ratings(raw.emotion_unit)
        return PredictorOutput(Predictions(raw.ids, values, attributes=self.attributes), raw.gender_probabilities)


class OnnxPredictor:
    """An ONNX model folder (``sertool export --format onnx``) run with onnxruntime: the batches, windows and
    outputs of ``CheckpointPredictor``, with the graph in the torch model's place and the ratings computed by
    the same ``LabelScaling.ratings``. An MM model's text embeddings come from the text model its folder names
    (or ``options.text_model``), through the cache the torch path fills."""

    def __init__(self, path: str | Path, options: InferenceOptions, *, source: str | None = None,
                 spelling: OptionSpelling = CLI_SPELLING) -> None:
        """
        Args:
            source: how messages name it (default: ``path``), e.g. the hub id it was fetched for.
            spelling: how the caller names ``options``' fields, in messages about the text and ASR models.

        Raises:
            SertoolError: as ``read_onnx_folder`` and ``OnnxSession``: refused when the model is opened.
        """
        self.name = source or str(path)
        self.options = options
        self.spelling = spelling
        self.folder = read_onnx_folder(path, source=self.name)
        (self.attributes, self.training_ids, self.unknown_training_from, self.config, self.label_scaling,
         self.input_s) = described_model(self.folder.payload, source=self.name)
        self.session = OnnxSession(self.folder, options)
        self._text_cache: TextEmbeddingCache | None = None
        self._transcripts = Transcripts(options, spelling)

    def predict(self, utterances: Sequence[Utterance]) -> PredictorOutput:
        from sertool.models.text_features import cached_embeddings

        embeddings = None
        if self.folder.graph.text_embedding is not None:
            utterances = self._transcripts.fill(utterances)
            embeddings = cached_embeddings(self._text_embedding_cache(), utterances)
        raw = run_batches(self.session, utterances, width=len(self.attributes), text_embeddings=embeddings,
                          max_batch_s=self.options.max_batch_s, num_workers=self.options.num_workers,
                          description=f"predicting with {self.name}")
        return PredictorOutput(Predictions(raw.ids, self.label_scaling.ratings(raw.emotion_unit),
                                           attributes=self.attributes), raw.gender_probabilities)

    def _text_embedding_cache(self) -> TextEmbeddingCache:
        """The cache of the text encoder the folder names (``--text-model`` elsewhere), opened on first use.

        Raises:
            SertoolError: the text model cannot be loaded, or gives embeddings of another width than the graph's.
        """
        if self._text_cache is None:
            from sertool.models.text import TextEncoder
            from sertool.models.text_features import encoder_cache

            spec = self.folder.graph.text_embedding
            assert spec is not None
            flag = self.spelling.name("text_model")
            encoder = TextEncoder(self.options.text_model or spec.model, max_tokens=spec.max_tokens, flag=flag)
            if encoder.output_dim != spec.dim:
                raise SertoolError(f"{spelled(flag, encoder.model_name_or_path)}: gives embeddings "
                                   f"{encoder.output_dim} wide; {self.name} takes those of {spec.model}, {spec.dim} "
                                   "wide")
            self._text_cache = encoder_cache(encoder, self.options.cache_dir)
        return self._text_cache


def described_model(payload: dict[str, Any], *, source: str) -> tuple[tuple[str, ...], frozenset[str] | None,
                                                                      tuple[str, ...], Config, LabelScaling,
                                                                      float | None]:
    """What a model's payload says of it (a checkpoint's, or an ONNX folder's description), the ``Predictor``
    attributes: the attributes it predicts, the ids it trained on (None where unrecorded), the ``--init-from``
    models of unknown training data, its config, its label scaling and the clip length it was made for.

    Raises:
        SertoolError: damaged attributes or config (naming ``source``).
    """
    recorded = payload.get("training_ids")  # absent from older checkpoints and the authors' releases
    config = Config.from_dict(payload["config"], source=f"{source} (its config)")
    recorded_scaling = payload.get("label_scaling")  # the authors' releases: sertool's 1 + 6·y
    # How the model's unit-scale outputs map to ratings (``on_scale`` maps them back with it).
    scaling = LabelScaling.from_dict(recorded_scaling) if isinstance(recorded_scaling, dict) else LabelScaling()
    return (payload_attributes(payload, source=source), frozenset(recorded) if recorded is not None else None,
            unknown_training_data(payload), config, scaling, model_input_s(config))


class Transcripts:
    """What MM models read besides audio: the transcripts the utterances carry, the missing ones from ASR
    (``options.asr``), cached; the ASR model is loaded on first need and kept across ``predict`` calls."""

    def __init__(self, options: InferenceOptions, spelling: OptionSpelling) -> None:
        self.options = options
        self.spelling = spelling
        self._transcriber: Transcriber | None = None

    def fill(self, utterances: Sequence[Utterance]) -> list[Utterance]:
        """``utterances``, each with a transcript."""
        if all(utt.transcript is not None for utt in utterances):
            return list(utterances)
        if self._transcriber is None:
            self._transcriber = Transcriber(self.options.asr, device=self.options.torch_device(),
                                            flag=self.spelling.name("asr"))
        return fill_transcripts(utterances, self._transcriber, cache_dir=self.options.cache_dir)


class CsvPredictor:
    """Predictions computed earlier (evaluate/predict output): looked up by id, never recomputed."""

    def __init__(self, path: str | Path) -> None:
        """
        Raises:
            SertoolError: the file is unreadable or its values are not on the 1..7 scale.
        """
        self.name = str(path)
        self.table = read_predictions(path)
        self.attributes = self.table.attributes  # the value columns it has
        self.training_ids: frozenset[str] | None = None  # a CSV does not say what made it
        self.unknown_training_from: tuple[str, ...] = ()
        self.input_s: float | None = None
        check_rating_scale(self.table, source=self.name)

    def predict(self, utterances: Sequence[Utterance]) -> PredictorOutput:
        return PredictorOutput(self.table.take([utt.id for utt in utterances], source=self.name))


class EnsemblePredictor:
    """Members combined by an ``EnsemblePlan`` (``sertool ensemble --save``): each attribute the plan covers from
    the members it names for it."""

    def __init__(self, path: str | Path, options: InferenceOptions, *, within: tuple[Path, ...] = (),
                 spelling: OptionSpelling = CLI_SPELLING) -> None:
        """
        Args:
            within: the ensemble files that include this one, outermost first (a plan may name other plans).

        Raises:
            SertoolError: the plan is unreadable, a member cannot be opened or does not predict an attribute the
                plan takes from it, or the plan includes itself, directly or through others (naming the chain).
        """
        self.name = str(path)
        resolved = Path(path).resolve()
        if resolved in within:
            chain = [*within[within.index(resolved):], resolved]
            raise SertoolError(f"{path}: an ensemble that includes itself ({' → '.join(str(p) for p in chain)}); "
                               "an ensemble's members must be checkpoints, predictions or other ensembles")
        self.plan = read_plan(path)
        base = Path(path).parent
        backbones = self.plan.backbone_paths or (None,) * len(self.plan.members)
        self.members = [open_predictor(_relative_to(member, base), member_options(options, backbone, base),
                                       within=(*within, resolved), spelling=spelling)
                        for member, backbone in zip(self.plan.members, backbones, strict=True)]
        check_coverage(self.plan, [member.attributes for member in self.members], source=self.name)
        self.attributes = self.plan.attributes
        self.training_ids = union_of_training_ids(self.members)
        self.unknown_training_from = tuple(dict.fromkeys(
            name for member in self.members for name in member.unknown_training_from))
        self.input_s = shortest_input_s([member.input_s for member in self.members])

    def predict(self, utterances: Sequence[Utterance]) -> PredictorOutput:
        outputs = [member.predict(utterances).predictions for member in self.members]
        return PredictorOutput(apply_plan(self.plan, outputs))


def on_scale(predictions: Predictions, predictor: Predictor, scale: str) -> Predictions:
    """``predictions`` (on the rating scale, as every predictor gives them) on ``scale``.

    ``SCALE_UNIT`` is the model's own 0..1 output scale: ``label_scaling.to_unit`` of each rating (a sigmoid
    head's raw output, e.g. the authors' released models' ``y`` before sertool's inferred ``1 + 6·y``; a
    value the rating scale clipped stays clipped, at 0 or 1). Values, segments and spread are mapped with
    the same affine map, so a window mean or an ensemble mean on one scale is the mean on the other.

    Raises:
        SertoolError: ``SCALE_UNIT`` for a predictions CSV (it holds ratings and not the model's label
            scaling), or an ensemble with such a member or with members whose label scalings differ.
    """
    if scale == SCALE_RATINGS:
        return predictions
    if scale != SCALE_UNIT:
        raise ValueError(f"unknown scale {scale!r}")
    scaling = unit_scaling(predictor)
    span = scaling.maximum - scaling.minimum
    return Predictions(
        ids=predictions.ids, values=scaling.to_unit(predictions.values),
        spread=None if predictions.spread is None else predictions.spread / span,
        segments=[dataclasses.replace(segment, values=tuple(float(value) for value in
                                                            scaling.to_unit(np.asarray(segment.values))))
                  for segment in predictions.segments],
        scale=SCALE_UNIT, attributes=predictions.attributes)


def unit_scaling(predictor: Predictor) -> LabelScaling:
    """The label scaling that maps ``predictor``'s ratings to its unit scale.

    Raises:
        SertoolError: as ``on_scale``.
    """
    if isinstance(predictor, EnsemblePredictor):
        scalings = [unit_scaling(member) for member in predictor.members]
        if any(scaling != scalings[0] for scaling in scalings):
            raise SertoolError(f"{predictor.name}: its members map their outputs to ratings differently, so they "
                               "have no one unit scale; ask for the ratings scale")
        return scalings[0]
    scaling = getattr(predictor, "label_scaling", None)
    if not isinstance(scaling, LabelScaling):
        raise SertoolError(f"{predictor.name}: predictions read from a file hold ratings, not the model that made "
                           "them, so they have no unit scale; ask for the ratings scale, or predict with the model")
    return scaling


def member_options(options: InferenceOptions, backbone_path: str | None, base: Path | None = None) -> InferenceOptions:
    """``options`` for one member of an ensemble: with the member's own backbone location (a path relative
    to ``base``, the ensemble file's folder, or a hub id), unless none is given or ``options`` names one for
    every member (``--backbone-path``, which wins)."""
    if backbone_path is None or options.backbone_path is not None:
        return options
    location = _relative_to(backbone_path, base) if base is not None else backbone_path
    return dataclasses.replace(options, backbone_path=str(location))


def union_of_training_ids(predictors: Sequence[Predictor]) -> frozenset[str] | None:
    """What any of ``predictors`` trained on (an ensemble is scored off all of it); None if one is unknown."""
    union: frozenset[str] = frozenset()
    for predictor in predictors:
        if predictor.training_ids is None:
            return None
        union |= predictor.training_ids
    return union


def open_predictor(path: str | Path, options: InferenceOptions | None = None, *,
                   within: tuple[Path, ...] = (), spelling: OptionSpelling = CLI_SPELLING) -> Predictor:
    """A predictor for ``path``: ``.csv`` predictions, a ``.json`` ensemble, or a checkpoint / run folder /
    model folder; a hub id (``owner/name``) that is no local path names a model folder on the hub.

    Args:
        within: for a member of an ensemble file, the ensemble files that include it (cycle detection).
        spelling: how the caller names ``options``' fields (``sertool.core.hub.CLI_SPELLING`` or
            ``API_SPELLING``), in the messages about the pretrained models the model is built from.

    Raises:
        SertoolError: the path is missing or not one of these.
    """
    options = options or InferenceOptions()
    check_quantize(options.quantize, options.torch_device(), options.amp)
    set_threads(options.threads)
    text = str(path)
    path = Path(text).expanduser()
    if not path.exists():
        if is_repo_id(text):
            onnx_folder = fetch_onnx_folder(text)
            if onnx_folder is not None:
                return OnnxPredictor(onnx_folder, options, source=text, spelling=spelling)
            return CheckpointPredictor(text, options, spelling=spelling)
        raise SertoolError(f"{path}: no such checkpoint, run folder, model folder, predictions CSV or ensemble file")
    if path.suffix.lower() == ".csv":
        return CsvPredictor(path)
    if path.suffix.lower() == ".json":
        return EnsemblePredictor(path, options, within=within, spelling=spelling)
    if is_onnx_folder(path) and not (path / BEST_NAME).is_file():  # a run folder means its best.pt, export or not
        return OnnxPredictor(path, options, spelling=spelling)
    return CheckpointPredictor(path, options, spelling=spelling)


def _relative_to(member: str, base: Path) -> Path | str:
    """Ensemble files name their members relative to their own folder (so the pair can move together); a
    member that is no path there but a hub id stays a hub id."""
    path = Path(member).expanduser()
    if path.is_absolute():
        return path
    return member if not (base / path).exists() and is_repo_id(member) else base / path
