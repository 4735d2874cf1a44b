"""An ONNX model folder's graph in onnxruntime: the session, where it runs, and one padded batch through it.

``OnnxSession`` is a ``runtime.runner.BatchForward``: ``runtime.runner.run_batches`` reads, batches and orders
the utterances around it exactly as it does around a torch model (``run_model``), so an ONNX folder gets the
windows, batches and outputs of the torch path. The graph runs in the precision it was exported in (float32).
"""
from __future__ import annotations

from typing import Any

import numpy as np

from sertool.core.config import DEFAULT_AMP, QUANTIZE_INT8
from sertool.core.constants import SAMPLE_RATE
from sertool.core.errors import SertoolError
from sertool.data.dataset import Batch
from sertool.inference.options import InferenceOptions
from sertool.store.onnx_folder import (
    GRAPH_NAME,
    SAMPLE_MASK,
    TEXT_EMBEDDINGS,
    WAVEFORMS,
    OnnxFolder,
    import_onnxruntime,
)

CPU_PROVIDER = "CPUExecutionProvider"
CUDA_PROVIDER = "CUDAExecutionProvider"


class OnnxSession:
    """The graph of ``folder`` in an onnxruntime session, opened (and its export id checked) at once.

    Args:
        folder: the ONNX folder (``sertool.store.onnx_folder.read_onnx_folder``).
        options: ``device`` (a GPU through onnxruntime's CUDA provider, where that is installed), ``threads``
            (onnxruntime's threads within an operator; 0: its default, one per core); ``amp`` must be off or
            auto and ``quantize`` off.

    Raises:
        SertoolError: onnxruntime missing (naming sertool's extra), an option the graph cannot honour, a graph
            file onnxruntime cannot read, or one of another export than ``config.json``.
    """

    def __init__(self, folder: OnnxFolder, options: InferenceOptions) -> None:
        onnxruntime = import_onnxruntime(needed_for=f"{folder.source} (an ONNX model folder)")
        _check_options(options, folder.source)
        self.folder = folder
        session_options = onnxruntime.SessionOptions()
        session_options.intra_op_num_threads = options.threads
        try:
            self.session = onnxruntime.InferenceSession(str(folder.graph_file), sess_options=session_options,
                                                        providers=_providers(onnxruntime, options))
        except Exception as error:  # noqa: BLE001 - onnxruntime's own exception types (Fail, InvalidProtobuf, ...)
            first = next((line for line in str(error).splitlines() if line.strip()), type(error).__name__)
            raise SertoolError(f"{folder.source}: onnxruntime cannot read its {GRAPH_NAME} ({first[:200]}); export "
                               "the model again") from None
        folder.check_export_id(self.session.get_modelmeta().custom_metadata_map)
        names = ([node.name for node in self.session.get_inputs()], [node.name for node in self.session.get_outputs()])
        if names != (list(folder.graph.inputs), list(folder.graph.outputs)):
            raise SertoolError(f"{folder.source}: its {GRAPH_NAME} takes {names[0]} and gives {names[1]}, not what its "
                               "config.json describes; export the model again")

    def __call__(self, batch: Batch) -> tuple[np.ndarray, np.ndarray | None]:
        """The graph's outputs for ``batch``: emotion ``[B, 3]`` on the unit scale, gender probabilities or None.

        Raises:
            SertoolError: a clip longer than the graph takes, or an MM graph's batch without text embeddings.
        """
        graph = self.folder.graph
        longest = int(batch.sample_mask.sum(dim=-1).max()) if len(batch) else 0
        if graph.max_input_samples is not None and longest > graph.max_input_samples:
            limit_s = graph.max_input_samples / SAMPLE_RATE
            raise SertoolError(f"{self.folder.source}: this Whisper model takes clips of at most {limit_s:g} s; got an "
                               f"utterance of {longest / SAMPLE_RATE:.1f} s: cut long audio into windows of at most "
                               f"{limit_s:g} s")
        feeds: dict[str, Any] = {WAVEFORMS: batch.waveforms.float().numpy(), SAMPLE_MASK: batch.sample_mask.numpy()}
        if TEXT_EMBEDDINGS in graph.inputs:
            if batch.text_embeddings is None or batch.text_embeddings.shape[0] != len(batch):
                raise SertoolError(f"{self.folder.source} is an MM model and got no transcripts: give the corpus "
                                   "transcripts (or let ASR make them)")
            feeds[TEXT_EMBEDDINGS] = batch.text_embeddings.float().numpy()
        outputs = self.session.run(list(graph.outputs), feeds)
        return outputs[0], outputs[1] if len(outputs) > 1 else None


def _check_options(options: InferenceOptions, source: str) -> None:
    """Refuse what the graph cannot honour: reduced precision.

    Raises:
        SertoolError: ``--amp`` other than auto or off, or ``--quantize int8``, naming the flag.
    """
    if options.amp not in (DEFAULT_AMP, "off"):
        raise SertoolError(f"--amp {options.amp}: {source} is an ONNX graph, which runs in the float32 it was exported "
                           "in; drop --amp, or predict with the run folder")
    if options.quantize == QUANTIZE_INT8:
        raise SertoolError(f"--quantize int8: {source} is an ONNX graph, which runs in the float32 it was exported in; "
                           "drop --quantize, or predict with the run folder")


def _providers(onnxruntime: Any, options: InferenceOptions) -> list[str]:
    """onnxruntime's CUDA provider where the device is a GPU, else its CPU provider.

    Raises:
        SertoolError: a GPU asked for by name (``--device cuda``) with an onnxruntime that has no CUDA provider.
    """
    if options.torch_device().type != "cuda":
        return [CPU_PROVIDER]
    if CUDA_PROVIDER in onnxruntime.get_available_providers():
        return [CUDA_PROVIDER, CPU_PROVIDER]
    if options.device == "cuda":
        raise SertoolError("--device cuda: this onnxruntime runs on the CPU only (the onnxruntime-gpu package has the "
                           "CUDA provider); pass --device cpu")
    return [CPU_PROVIDER]  # auto: the GPU that torch sees is not one onnxruntime can use here
