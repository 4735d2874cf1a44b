"""The synthesis worker: one fresh Python process per corpus speaks every utterance, in order.

Why a separate process does the synthesis: eSpeak keeps hidden state from one utterance to the next (the
phase of its pitch flutter, its gain control, its cycle counters), so an utterance depends on everything
synthesised before it in the same process. A fresh worker process per corpus, fed the utterances in a fixed
order, makes the audio a function of the seed alone (eSpeak's noise generator, which it seeds from the clock,
is reseeded before each utterance); the worker also overlaps synthesis with the post-processing (resampling,
noise, writing) done by the caller (``sertool.demo.corpus``), on a second core.

The protocol: the caller writes the requests (a JSON list of ``Speech`` fields) to a file and starts
``python -c "from sertool.demo.worker import _serve; _serve(<path>)"``; the worker writes each clip to its
stdout as a ``_HEADER`` sample count followed by little-endian int16 samples, and anything else (eSpeak's
messages, a traceback) to a log file the caller quotes when the worker stops early.

The worker imports this module and ``sertool.demo.espeak`` only: no torch, no ``sertool.data``, so it starts
in ~0.1 s instead of ~1 s.
"""
from __future__ import annotations

import dataclasses
import json
import os
import struct
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from sertool.demo.espeak import Espeak, Speech

_HEADER = struct.Struct("<Q")  # samples in the clip that follows on the worker's stdout


def synthesise_in_order(speeches: Sequence[Speech]) -> Iterator[np.ndarray]:
    """Yield the int16 ``ESPEAK_SAMPLE_RATE`` waveform of each of ``speeches``, in order.

    The synthesis runs in one fresh Python process that sees the same sequence every time: that is what
    makes the audio a function of the seed (see the module docstring). A plain subprocess rather than
    multiprocessing: it needs no ``if __name__ == "__main__"`` guard in the caller's script and never
    inherits an eSpeak already loaded here. The requests go in through a file and the audio comes back on
    the worker's stdout, so neither side can block the other on a full pipe.
    """
    with tempfile.TemporaryDirectory(prefix="sertool-demo-") as scratch:
        requests_path, log_path = Path(scratch) / "speech.json", Path(scratch) / "worker.log"
        requests_path.write_text(json.dumps([dataclasses.asdict(speech) for speech in speeches]), encoding="utf-8")
        command = [sys.executable, "-c", f"from {__name__} import _serve; _serve({str(requests_path)!r})"]
        package_root = str(Path(__file__).resolve().parents[2])  # the folder that holds sertool/
        python_path = os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")]))
        with log_path.open("wb") as log, subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=log, env={**os.environ, "PYTHONPATH": python_path}
        ) as worker:
            stdout = worker.stdout
            assert stdout is not None, "Popen(stdout=PIPE) always gives a pipe"

            def failure(done: int) -> RuntimeError:
                worker.wait()
                return RuntimeError(
                    f"the eSpeak NG worker stopped after {done} of {len(speeches)} utterances (exit status "
                    f"{worker.returncode}): {log_path.read_text(errors='replace')[-2000:]}"
                )

            try:
                for done in range(len(speeches)):
                    header = stdout.read(_HEADER.size)
                    if len(header) < _HEADER.size:
                        raise failure(done)
                    (num_samples,) = _HEADER.unpack(header)
                    data = stdout.read(2 * num_samples)
                    if len(data) < 2 * num_samples:
                        raise failure(done)
                    yield np.frombuffer(data, dtype="<i2")
                if worker.wait() != 0:
                    raise failure(len(speeches))
            finally:
                if worker.poll() is None:  # the caller gave up early (an error, Ctrl-C)
                    worker.kill()


def _serve(requests_path: str) -> None:
    """Worker-process entry point: synthesise the JSON list of requests at ``requests_path``, in order,
    onto stdout (each clip as a ``_HEADER`` sample count, then little-endian int16 samples)."""
    channel = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # anything the C library prints goes to the log, never into the audio stream
    engine = Espeak()  # the one initialisation of this process
    for request in json.loads(Path(requests_path).read_text(encoding="utf-8")):
        samples = engine.synthesise(Speech(**request))
        channel.write(_HEADER.pack(samples.size))
        channel.write(samples.astype("<i2").tobytes())
    channel.flush()
