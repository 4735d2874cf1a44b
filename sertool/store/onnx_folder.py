"""ONNX model folders (``sertool export --format onnx``): a trained model as one graph that onnxruntime runs.

The folder holds:

- ``config.json``: the self-description a model folder's holds (``model_folder.described``: the resolved
  config, the label scaling, the attributes, the metrics and where they come from, the provenance), format
  ``sertool-onnx``, and an ``onnx`` section (``GraphSpec``): the graph's inputs and outputs, the longest clip
  it takes (a Whisper encoder's), and for an MM model how to compute the text embedding its graph takes (the
  text model, its pooling, truncation and width);
- ``model.onnx``: the graph with every weight inside it (above ONNX's 2 GiB limit for one file, the weights go
  to ``model.onnx.data`` beside it, as ONNX's external data, after a header that names the export); protobuf
  and raw tensors, no pickle;
- ``training_ids.json``: what it trained on (``evaluate`` and ``ensemble`` leave those out), as a model folder's;
- ``README.md``: the model card.

The graph ends at the model's unit-scale outputs: the ratings (``LabelScaling.ratings``: the scale and the
clipping to 1..7) are computed in Python, by the code the torch path uses. Reading a folder runs no code:
``config.json`` is parsed as JSON, and onnxruntime reads the graph as data and runs only its own operators
(sertool registers no custom operator library). ``config.json``, the graph and its weights file share an
export id, so files of two exports (an interrupted ``--force``) are refused rather than mixed.
"""
from __future__ import annotations

import dataclasses
import importlib
import json
import uuid
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

from sertool.core.constants import MODEL_CONFIG_NAME
from sertool.core.errors import SertoolError, missing_package
from sertool.core.hub import download_snapshot
from sertool.core.io import load_json
from sertool.guards.integrity import FILES_SHA256, check_file_digests, check_seal, file_digests, seal
from sertool.guards.outputs import OutputPlan
from sertool.guards.reads import MAX_CHECKPOINT_BYTES, check_user_file, open_user_file
from sertool.store.model_folder import (
    CARD_NAME,
    EXPORT_ID,
    FOLDER_FILES,
    ONNX_FORMAT,
    described,
    read_training_ids,
    undescribed,
    write_training_ids,
)
from sertool.store.sharing import TRAINING_IDS_NAME

if TYPE_CHECKING:
    from onnx import ModelProto

ONNX_FORMAT_VERSION = 1
GRAPH_NAME = "model.onnx"
GRAPH_DATA_NAME = "model.onnx.data"  # the weights of a graph too large for one protobuf file
ONNX_FOLDER_FILES: tuple[str, ...] = (MODEL_CONFIG_NAME, GRAPH_NAME, GRAPH_DATA_NAME, CARD_NAME, TRAINING_IDS_NAME)
# sertool's extra that holds what ONNX folders need, then its packages (setup.cfg): named when one is missing.
ONNX_EXTRA: tuple[str, ...] = ("onnx", "onnx", "onnxruntime")
# The graph's inputs and outputs, by name.
WAVEFORMS = "waveforms"  # [batch, samples] float32, 16 kHz mono, zero-padded on the right
SAMPLE_MASK = "sample_mask"  # [batch, samples] bool, True on real samples
TEXT_EMBEDDINGS = "text_embeddings"  # [batch, width] float32: MM models only
EMOTION = "emotion"  # [batch, attributes] float32 on the unit scale, the model's attributes (all three: A, V, D)
GENDER_PROBABILITIES = "gender_probabilities"  # [batch, 2] float32 over GENDERS: models with a gender head only
_SECTION = "onnx"  # config.json's key for the graph's description
# One protobuf file holds at most 2 GiB; above this many bytes of weights they go to GRAPH_DATA_NAME.
_INLINE_WEIGHT_BYTES = 2**31 - 2**27
_EXTERNAL_TENSOR_BYTES = 1024  # smaller weights stay in the graph file
# The weights file opens with its export's id (``_data_header``), which config.json must share: the graph names
# tensors by offset only, so a weights file of another export would be read as garbage without a word.
_DATA_HEADER_BYTES = 64


@dataclass(frozen=True)
class TextEmbeddingSpec:
    """How an MM model's text embedding is computed: ``TextEncoder(model, max_tokens)``, the masked mean of the
    last hidden states over the real tokens (``pooling``), ``dim`` wide, float32."""

    model: str
    pooling: str
    max_tokens: int
    dim: int


@dataclass(frozen=True)
class GraphSpec:
    """The ``onnx`` section of an ONNX folder's ``config.json``: what the graph takes and gives.

    Attributes:
        inputs / outputs: the graph's names, in order (``WAVEFORMS``, ``SAMPLE_MASK`` [, ``TEXT_EMBEDDINGS``];
            ``EMOTION`` [, ``GENDER_PROBABILITIES``]).
        max_input_samples: the longest clip the graph takes, in samples at 16 kHz (a Whisper encoder's), or None.
        text_embedding: for an MM model, how to compute its ``TEXT_EMBEDDINGS`` input; None otherwise.
        opset: the ONNX operator set of the graph.
        weights_file: ``GRAPH_DATA_NAME`` where the weights lie beside the graph, None where they are inside it.
    """

    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    max_input_samples: int | None
    text_embedding: TextEmbeddingSpec | None
    opset: int
    weights_file: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The section as ``config.json`` holds it, with each input's and output's shape and meaning spelled out
        for readers without sertool."""
        described_names = {
            WAVEFORMS: "[batch, samples] float32: 16 kHz mono, zero-padded on the right",
            SAMPLE_MASK: "[batch, samples] bool: True on real samples (a prefix of each row)",
            TEXT_EMBEDDINGS: "[batch, width] float32: the transcript's embedding (text_embedding)",
            EMOTION: "[batch, attributes] float32: the model's attributes (attributes, in that order) on the unit "
                     "scale; ratings = minimum + (maximum - minimum) * value, clipped to [minimum, maximum] "
                     "(label_scaling)",
            GENDER_PROBABILITIES: "[batch, 2] float32: probabilities of Male, Female",
        }
        return {
            "file": GRAPH_NAME, "weights_file": self.weights_file, "opset": self.opset, "runtime": "onnxruntime",
            "inputs": {name: described_names[name] for name in self.inputs},
            "outputs": {name: described_names[name] for name in self.outputs},
            "max_input_samples": self.max_input_samples,
            "text_embedding": None if self.text_embedding is None else vars(self.text_embedding),
        }

    @classmethod
    def from_dict(cls, data: Any, *, source: str) -> GraphSpec:
        """Read the section back.

        Raises:
            SertoolError: a section that is not one sertool wrote (naming ``source``).
        """
        try:
            text = data["text_embedding"]
            return cls(inputs=tuple(data["inputs"]), outputs=tuple(data["outputs"]),
                       max_input_samples=None if data["max_input_samples"] is None else int(data["max_input_samples"]),
                       text_embedding=None if text is None else TextEmbeddingSpec(
                           model=str(text["model"]), pooling=str(text["pooling"]), max_tokens=int(text["max_tokens"]),
                           dim=int(text["dim"])),
                       opset=int(data["opset"]),
                       weights_file=None if data.get("weights_file") is None else GRAPH_DATA_NAME)
        except (KeyError, TypeError, ValueError):
            raise SertoolError(f"{source}: a damaged ONNX model folder: its {MODEL_CONFIG_NAME} does not describe the "
                               "graph; export the model again") from None


@dataclass(frozen=True)
class OnnxFolder:
    """An ONNX model folder, read (``read_onnx_folder``).

    Attributes:
        folder: where it is.
        source: how messages name it.
        payload: ``config.json`` (and ``training_ids.json``) as a checkpoint's payload without weights: ``config``,
            ``label_scaling``, ``attributes``, ``training_ids``, ``metrics``, ...
        graph: its ``onnx`` section.
        export_id: what the graph's metadata must say too (``check_export_id``).
    """

    folder: Path
    source: str
    payload: dict[str, Any]
    graph: GraphSpec
    export_id: str | None

    @property
    def graph_file(self) -> Path:
        return self.folder / GRAPH_NAME

    def check_export_id(self, metadata: dict[str, str]) -> None:
        """Refuse a graph whose metadata (``onnxruntime``'s ``custom_metadata_map``) is of another export.

        Raises:
            SertoolError: naming both files.
        """
        if metadata.get(EXPORT_ID) != self.export_id:
            raise SertoolError(f"{self.source}: {MODEL_CONFIG_NAME} and {GRAPH_NAME} come from different exports (an "
                               "interrupted overwrite?); export the model again")


def is_onnx_folder(path: str | Path) -> bool:
    """Whether ``path`` is a folder whose ``config.json`` declares an ONNX model folder."""
    path = Path(path).expanduser()
    if not (path.is_dir() and (path / MODEL_CONFIG_NAME).is_file()):
        return False
    try:
        data = load_json(path / MODEL_CONFIG_NAME, what="model config")
    except SertoolError:
        return False  # not this kind of folder: the model-folder reader says what is wrong with it
    return isinstance(data, dict) and data.get("format") == ONNX_FORMAT


def fetch_onnx_folder(repo_id: str) -> Path | None:
    """The local copy of the hub's model ``repo_id`` (``download_snapshot``, the local cache first) when it is an
    ONNX model folder; None when it is not one or cannot be fetched, for the model-folder reader to open or
    to say what is missing."""
    try:
        folder = download_snapshot(repo_id, files=tuple(dict.fromkeys((*FOLDER_FILES, *ONNX_FOLDER_FILES))))
    except SertoolError:
        return None
    return folder if is_onnx_folder(folder) else None


def read_onnx_folder(folder: str | Path, *, source: str | None = None) -> OnnxFolder:
    """Read an ONNX model folder's ``config.json`` and find its graph (read by onnxruntime, not here).

    Raises:
        SertoolError: not an ONNX folder, a newer format, a damaged description, or no readable graph file.
    """
    folder = Path(folder).expanduser()
    source = source or str(folder)
    data = load_json(folder / MODEL_CONFIG_NAME, what="model config")
    check_seal(data, folder / MODEL_CONFIG_NAME)
    if not isinstance(data, dict) or data.get("format") != ONNX_FORMAT:
        raise SertoolError(f"{source}: not an ONNX model folder (sertool export --format onnx)")
    if data.get("format_version", 0) > ONNX_FORMAT_VERSION:
        raise SertoolError(f"{source}: written by a newer sertool (format {data['format_version']}); upgrade sertool")
    graph = GraphSpec.from_dict(data.get(_SECTION), source=source)
    if not (folder / GRAPH_NAME).exists():
        raise SertoolError(f"{source}: an ONNX model folder without {GRAPH_NAME}; export it again (sertool export "
                           "--format onnx)")
    check_user_file(folder / GRAPH_NAME, what="ONNX graph", max_bytes=MAX_CHECKPOINT_BYTES)
    if graph.weights_file is not None:
        _check_weights_file(folder / graph.weights_file, data.get(EXPORT_ID), source=source)
    check_file_digests(folder, data, source=source)  # onnxruntime would run a graph with a flipped weight
    payload = {key: value for key, value in undescribed(data).items() if key != _SECTION}
    training_ids = read_training_ids(folder, data, source=source)
    if training_ids is not None:
        payload["training_ids"] = training_ids
    return OnnxFolder(folder, source, payload, graph, data.get(EXPORT_ID))


def _data_header(export_id: str) -> bytes:
    """The first bytes of a weights file: its export's id (the tensors start after it)."""
    return f"sertool-onnx {export_id}\n".encode().ljust(_DATA_HEADER_BYTES, b"\0")


def _check_weights_file(path: Path, export_id: str | None, *, source: str) -> None:
    """Refuse a weights file that is missing or of another export than ``config.json``: onnxruntime would read
    its tensors at the offsets the graph names, whatever they hold.

    Raises:
        SertoolError: naming the file.
    """
    if not path.is_file():
        raise SertoolError(f"{source}: its graph keeps its weights in {path.name}, which is missing; copy the whole "
                           "folder, or export the model again")
    with open_user_file(path, "rb", what="ONNX weights", max_bytes=MAX_CHECKPOINT_BYTES) as handle:
        header = handle.read(_DATA_HEADER_BYTES)
    if export_id is None or header != _data_header(export_id):
        raise SertoolError(f"{source}: {MODEL_CONFIG_NAME} and {path.name} come from different exports (an "
                           "interrupted overwrite?); export the model again")


def write_onnx_folder(payload: dict[str, Any], graph: ModelProto, spec: GraphSpec, outputs: OutputPlan,
                      folder: Path, *, card: str, training_ids: list[str]) -> list[Path]:
    """Write an ONNX model folder: ``graph`` (its weights beside it when too large for one file), ``config.json``
    (``payload``'s self-description and ``spec``), the training ids and the model card; other files in ``folder``
    stay.

    Each file is committed through ``outputs`` (atomically, exclusively unless ``--force``) while the folder is
    held; the graph's metadata and ``config.json`` share a new export id.

    Args:
        payload: what ``load_model`` returned, made ``sharing.shareable`` (its weights are not written: the graph
            holds them).
        graph: the exported graph, every weight inside it; its metadata gains the export id.
        spec: what the graph takes and gives (where its weights lie is decided here).
        outputs: the command's outputs, in which ``folder`` and the ``ONNX_FOLDER_FILES`` are declared.
        folder: created if missing.
        card: the README.md text.
        training_ids: the utterances the model trained on, written to ``TRAINING_IDS_NAME``.

    Returns:
        The files written.
    """
    external_data_helper = import_onnx(needed_for="an ONNX export").external_data_helper
    export_id = uuid.uuid4().hex
    for key, value in ((EXPORT_ID, export_id), ("format", ONNX_FORMAT)):
        entry = graph.metadata_props.add()
        entry.key, entry.value = key, value
    weights = [tensor for tensor in graph.graph.initializer if len(tensor.raw_data) >= _EXTERNAL_TENSOR_BYTES]
    beside = sum(len(tensor.raw_data) for tensor in weights) > _INLINE_WEIGHT_BYTES
    spec = dataclasses.replace(spec, weights_file=GRAPH_DATA_NAME if beside else None)
    written = [folder / GRAPH_NAME, *([folder / GRAPH_DATA_NAME] if beside else []), folder / CARD_NAME,
               folder / TRAINING_IDS_NAME, folder / MODEL_CONFIG_NAME]
    with outputs.holding(folder, flag="--out"):
        if beside:
            with outputs.writing(folder / GRAPH_DATA_NAME, "wb") as handle:
                header = _data_header(export_id)
                handle.write(header)
                offset = len(header)
                for tensor in weights:
                    data = tensor.raw_data
                    handle.write(data)
                    external_data_helper.set_external_data(tensor, location=GRAPH_DATA_NAME, offset=offset,
                                                           length=len(data))
                    tensor.data_location = tensor.EXTERNAL
                    tensor.ClearField("raw_data")
                    offset += len(data)
        outputs.write_data(written[0], graph.SerializeToString())
        with outputs.writing(folder / CARD_NAME) as handle:
            handle.write(card)
        write_training_ids(outputs, folder / TRAINING_IDS_NAME, export_id=export_id, training_ids=training_ids)
        # Last, sealed, with the digests of the graph (and its weights) as written: damage is refused on loading.
        graph_files = [folder / GRAPH_NAME, *([folder / GRAPH_DATA_NAME] if beside else [])]
        config = seal({"format": ONNX_FORMAT, "format_version": ONNX_FORMAT_VERSION, EXPORT_ID: export_id,
                       **described(payload), _SECTION: spec.to_dict(), FILES_SHA256: file_digests(graph_files)})
        with outputs.writing(folder / MODEL_CONFIG_NAME) as handle:
            json.dump(config, handle, indent=2)
            handle.write("\n")
    return written


def import_onnxruntime(*, needed_for: str) -> ModuleType:
    """``onnxruntime``, or the one-line error that names sertool's ``onnx`` extra.

    Raises:
        SertoolError: onnxruntime is not installed.
    """
    return _import_of_the_extra("onnxruntime", needed_for=needed_for)


def import_onnx(*, needed_for: str) -> ModuleType:
    """``onnx``, or the one-line error that names sertool's ``onnx`` extra.

    Raises:
        SertoolError: onnx is not installed.
    """
    return _import_of_the_extra("onnx", needed_for=needed_for)


def _import_of_the_extra(module: str, *, needed_for: str) -> ModuleType:
    try:
        return importlib.import_module(module)
    except ImportError:
        raise missing_package(module, needed_for=needed_for, extra=ONNX_EXTRA) from None
