"""Transcripts from ASR (a transformers Whisper model) for utterances that have none, cached on disk.

The "MM" systems embed the transcript of every utterance. MSP-Podcast ships transcripts; where one is
missing, or for new audio, ``fill_transcripts`` makes it with Whisper (``openai/whisper-large-v3`` unless
``--asr`` names another hub id or a local folder). Transcribing is slow, so every transcript is kept in a
``TranscriptCache`` keyed by the ASR setup and the audio content: nothing is transcribed twice, and a run
whose transcripts are all cached never loads the ASR weights.

The model runs in half precision on a GPU (bf16 where the GPU supports it, else fp16: ``--amp auto``'s rule,
``sertool.core.devices.half_precision``), as Whisper is usually run there, and in float32 on the CPU. Decoding is
greedy (deterministic). Whisper hears at most one window (30 s for every released model) at a
time: longer audio is cut into the fewest equal chunks that each fit in one window, each chunk is
transcribed alone and the texts are joined with a space. A word that straddles a cut may be garbled;
MSP-Podcast utterances (at most about 11 s) are never cut.
"""
from __future__ import annotations

import copy
import dataclasses
import logging
import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from sertool.cache.items import cache_root, setup_key
from sertool.cache.transcripts import TRANSCRIPT_CACHE_SUBDIR, AudioTranscriptCache
from sertool.core.config import DEFAULT_ASR_MODEL_ID, DEFAULT_DEVICE
from sertool.core.devices import half_precision, select_device
from sertool.core.errors import SertoolError
from sertool.core.hub import CLI_SPELLING, load_pretrained, model_identity, model_revision, spelled
from sertool.data.audio import SAMPLE_RATE, load_audio
from sertool.data.dataset import load_utterance_audio
from sertool.data.records import Utterance
from sertool.guards.third_party import without_log_message

log = logging.getLogger(__name__)

DEFAULT_ASR_BATCH_SIZE = 8  # windows per generate call
# Whisper's generate hands its parent both a generation config and suppress_tokens, which the parent then
# calls deprecated (once per process): transformers' own calls, nothing a caller can change.
GENERATE_LOGGER = "transformers.generation.utils"
GENERATE_ARGUMENTS_WARNING = "Passing `generation_config` together with generation-related arguments"

# An audio file, a 1-D waveform at SAMPLE_RATE, or an utterance (its whole file, or its window of one).
AudioInput = str | os.PathLike | Tensor | Utterance


class Transcriber:
    """Greedy Whisper transcription of 16 kHz waveforms, in batches.

    Construction is cheap: it reads only the model's config (which validates ``--asr`` early) and its
    revision. The weights and the processor are loaded on the first ``transcribe``, so a caller whose
    transcripts are all cached never pays for them.

    Example:
        >>> transcriber = Transcriber("openai/whisper-large-v3", language="en")
        >>> transcriber.transcribe([load_audio("clip.wav")])
        ['I had a great time.']
    """

    def __init__(
        self,
        model_name_or_path: str = DEFAULT_ASR_MODEL_ID,
        *,
        device: str | torch.device | None = None,
        language: str | None = None,
        max_new_tokens: int | None = None,
        batch_size: int = DEFAULT_ASR_BATCH_SIZE,
        flag: str = CLI_SPELLING.name("asr"),
    ) -> None:
        """
        Args:
            model_name_or_path: hub id or local folder of a ``WhisperForConditionalGeneration`` with its
                processor (feature extractor and tokenizer).
            device: where the model runs; None: CUDA when available, else the CPU. It runs in ``dtype``: bf16
                on a GPU that supports it, else fp16 (``--amp auto``'s rule), float32 on the CPU.
            language: spoken language (``"en"`` or ``"english"``) of a multilingual model; None lets the
                model detect it for every window.
            max_new_tokens: tokens generated per window at most; None: half the decoder's context (224 for
                released models, openai/whisper's default), ample for 30 s of speech.
            batch_size: windows transcribed per ``generate`` call.
            flag: the option that names the model, as the caller spells it (``--asr``, or ``asr=`` in
                Python: ``sertool.core.hub.OptionSpelling``), for messages.

        Raises:
            SertoolError: the model cannot be found or is not a Whisper model (naming ``flag``).
        """
        from transformers import AutoConfig

        if batch_size < 1 or (max_new_tokens is not None and max_new_tokens < 1):
            raise ValueError(f"batch_size and max_new_tokens must be >= 1, got {batch_size} and {max_new_tokens}")
        config = load_pretrained(AutoConfig.from_pretrained, model_name_or_path, flag=flag)
        if config.model_type != "whisper":
            raise SertoolError(
                f"{spelled(flag, model_name_or_path)}: a {config.model_type} model, not Whisper; pass a Whisper model "
                f"(e.g. {DEFAULT_ASR_MODEL_ID}) or a folder holding one"
            )
        self.model_name_or_path = model_name_or_path
        self.flag = flag
        self.device = select_device(device or DEFAULT_DEVICE)
        self.dtype = half_precision(self.device) or torch.float32  # what the weights are loaded in
        self.language = language.lower() if language else None
        self.max_new_tokens = max_new_tokens or int(config.max_target_positions) // 2
        self.batch_size = batch_size
        self.revision = model_revision(model_name_or_path, config.to_json_string())
        self._processor: Any = None  # these four are set by _load, on first use
        self._model: Any = None
        self._generation_config: Any = None
        self._task: str | None = None

    @property
    def cache_key(self) -> str:
        """Names everything a transcript depends on: model, revision, language and decoding."""
        model = model_identity(self.model_name_or_path)
        settings: dict[str, object] = {
            "model": model,
            "revision": self.revision,
            "language": self.language,
            "max_new_tokens": self.max_new_tokens,
            "decoding": "greedy",
            "long_audio": "equal-chunks-of-one-window-joined-by-space",
        }
        if self.dtype != torch.float32:
            # Half precision may change a word. Float32 transcripts keep the keys they had before the
            # precision was part of the key (every transcript was made in float32 then).
            settings["computed_in"] = str(self.dtype).removeprefix("torch.")
        return setup_key(model, settings)

    @property
    def loaded(self) -> bool:
        """Whether the weights have been loaded (by a ``transcribe`` call)."""
        return self._model is not None

    def transcribe(self, waveforms: Sequence[Tensor]) -> list[str]:
        """One line of text per waveform, in input order.

        Args:
            waveforms: 1-D float waveforms at 16 kHz, any length (an empty one gives ``""``).

        Raises:
            SertoolError: the model cannot be loaded (names ``--asr``).
        """
        for index, waveform in enumerate(waveforms):
            if waveform.dim() != 1:
                raise ValueError(f"waveform {index} has shape {tuple(waveform.shape)}; expected 1-D samples")
        self._load()
        window_samples = int(self._processor.feature_extractor.n_samples)
        owners: list[int] = []
        windows: list[Tensor] = []
        for index, waveform in enumerate(waveforms):
            chunks = _equal_chunks(waveform.detach().to("cpu", torch.float32), window_samples)
            windows.extend(chunks)
            owners.extend([index] * len(chunks))
        texts: list[list[str]] = [[] for _ in waveforms]
        for start in range(0, len(windows), self.batch_size):
            batch_texts = self._transcribe_windows(windows[start : start + self.batch_size])
            for owner, text in zip(owners[start : start + self.batch_size], batch_texts, strict=True):
                texts[owner].append(text)
        # One line per waveform: every run of whitespace (newlines included) becomes one space.
        return [" ".join(word for part in parts for word in part.split()) for parts in texts]

    def _transcribe_windows(self, windows: list[Tensor]) -> list[str]:
        """Texts of windows that each fit in one Whisper window (the feature extractor pads them to it)."""
        features = self._processor.feature_extractor(
            [window.numpy() for window in windows], sampling_rate=SAMPLE_RATE, return_tensors="pt"
        ).input_features
        with torch.inference_mode(), without_log_message(GENERATE_LOGGER, GENERATE_ARGUMENTS_WARNING):
            token_ids = self._model.generate(
                features.to(self.device, self._model.dtype),
                generation_config=self._generation_config,
                language=self.language,
                task=self._task,
            )
        return self._processor.batch_decode(token_ids, skip_special_tokens=True)

    def _load(self) -> None:
        if self._model is not None:
            return
        from transformers import WhisperForConditionalGeneration, WhisperProcessor

        name = self.model_name_or_path
        processor = load_pretrained(WhisperProcessor.from_pretrained, name, flag=self.flag)
        if processor.tokenizer.vocab_size == 0:  # transformers loads a missing tokenizer as an empty one
            raise SertoolError(
                f"{spelled(self.flag, name)}: holds no tokenizer (tokenizer.json, or vocab.json and merges.txt), so "
                "its output cannot be read; copy the model's tokenizer files into it"
            )
        model = load_pretrained(
            WhisperForConditionalGeneration.from_pretrained, name, flag=self.flag, dtype=self.dtype
        )
        generation_config = copy.deepcopy(model.generation_config)
        generation_config.do_sample = False
        generation_config.num_beams = 1
        # Whisper's generate adds the prompt's length (start, language, task tokens) to max_length, so this
        # bounds the new tokens; max_new_tokens would do the same but makes transformers warn on every call.
        generation_config.max_new_tokens = None
        generation_config.max_length = self.max_new_tokens
        multilingual = bool(getattr(generation_config, "is_multilingual", False))
        if self.language is not None:
            _check_language(name, self.language, generation_config, multilingual=multilingual)
        # Force "transcribe" on multilingual models: left to itself the model may pick "translate".
        self._task = "transcribe" if multilingual else None
        self._generation_config = generation_config
        self._processor = processor
        # transformers annotates PreTrainedModel.to through a decorator whose type hides the device argument.
        self._model = model.to(self.device).eval()  # type: ignore[arg-type]


class TranscriptCache(AudioTranscriptCache[AudioInput]):
    """Transcripts of one ``Transcriber`` setup, made once and kept on disk: an ``AudioTranscriptCache``
    (``sertool.cache.transcripts``: keys, layout, format) that reads an utterance's window of its file, a
    file whole, and takes a waveform as it is.
    """

    def __init__(self, cache_dir: str | os.PathLike[str], transcriber: Transcriber, *,
                 scan_cache_dir: str | os.PathLike[str] | None = None) -> None:
        """
        Args:
            cache_dir: the transcripts' folder (one subfolder per ASR setup).
            transcriber: the ASR setup.
            scan_cache_dir: sertool's cache folder, where file digests are memoised (None: the default).
        """
        super().__init__(cache_dir, transcriber, read=_waveform, scan_cache_dir=scan_cache_dir)
        self.transcriber: Transcriber = transcriber


def fill_transcripts(
    utterances: Sequence[Utterance],
    asr: str | Transcriber,
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    device: str | torch.device | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> list[Utterance]:
    """``utterances`` with every missing transcript (None) made by ASR; existing ones are kept as they are.

    Args:
        utterances: any utterances; only those with ``transcript is None`` are transcribed (their audio
            files, through the cache).
        asr: the ``--asr`` model (hub id or folder), or a ready ``Transcriber``. A name becomes a
            ``Transcriber`` only when some transcript is missing; its weights load only on a cache miss.
        cache_dir: sertool's cache folder (None: ``cache_root()``'s default); transcripts live in its
            ``transcripts/`` subfolder.
        device: where a ``Transcriber`` made from a name runs (None: CUDA when available); unused when
            ``asr`` is a ``Transcriber``.
        progress: ``(done, total)`` over the utterances that are transcribed (cache misses).

    Returns:
        New list in the same order; filled utterances are copies with ``transcript`` set.

    Raises:
        SertoolError: the ASR model cannot be loaded, or an audio or cache file cannot be read.
    """
    missing = [index for index, utt in enumerate(utterances) if utt.transcript is None]
    filled = list(utterances)
    if not missing:
        return filled
    transcriber = asr if isinstance(asr, Transcriber) else Transcriber(asr, device=device)
    cache = TranscriptCache(cache_root(cache_dir) / TRANSCRIPT_CACHE_SUBDIR, transcriber,
                            scan_cache_dir=cache_dir)
    texts = cache.get([utterances[index] for index in missing], progress=progress)
    for index, text in zip(missing, texts, strict=True):
        filled[index] = dataclasses.replace(utterances[index], transcript=text)
    log.info("transcripts from ASR: %d cached, %d transcribed", cache.hits, cache.misses)
    return filled


def _equal_chunks(waveform: Tensor, window_samples: int) -> list[Tensor]:
    """The fewest equal-length pieces of ``waveform`` that each fit in ``window_samples`` (none if empty).

    Equal pieces avoid a near-empty last window, on which Whisper tends to hallucinate.
    """
    num_chunks = math.ceil(waveform.numel() / window_samples)
    if num_chunks <= 1:
        return [waveform] if waveform.numel() else []
    return list(torch.tensor_split(waveform, num_chunks))


def _check_language(name: str, language: str, generation_config: Any, *, multilingual: bool) -> None:
    """Raise a SertoolError unless the model can be told to transcribe ``language``."""
    from transformers.models.whisper.tokenization_whisper import TO_LANGUAGE_CODE

    if not multilingual:
        raise SertoolError(
            f"--asr {name}: a model with no language tokens (English-only) cannot be told a language ({language!r}); "
            "omit the language"
        )
    code = TO_LANGUAGE_CODE.get(language, language)
    if f"<|{code}|>" not in getattr(generation_config, "lang_to_id", {}):
        raise SertoolError(
            f"--asr {name}: does not know language {language!r}; use a code such as 'en' or a name such as 'english'"
        )


def _waveform(item: AudioInput) -> Tensor:
    """The 16 kHz waveform of an item: reading only a window's span of its file."""
    if isinstance(item, Tensor):
        return item
    return load_utterance_audio(item) if isinstance(item, Utterance) else load_audio(Path(item))
