"""The training loop: accumulation, resume, DDP, the non-finite guard, checkpoints, run folders."""
from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from sertool.core.config import Config
from sertool.core.errors import SertoolError
from sertool.data.corpus import open_corpus
from sertool.store.checkpoints import load_checkpoint
from sertool.training import loop
from sertool.training.loop import _Run, train
from tests.cases import case
from tests.corpus_files import write_learnable_corpus
from tests.ddp_ranks import assert_ranks_agree, run_ranks
from tests.systems import InterruptAt, nan_gradient_loss, small_config


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return write_learnable_corpus(tmp_path_factory.mktemp("corpus") / "c")


def model_state(run_dir: Path, name: str = "last.pt") -> dict[str, torch.Tensor]:
    return load_checkpoint(run_dir, name=name)["model_state"]


def assert_same_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], atol: float = 0.0) -> None:
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=atol, rtol=0, msg=key)


def test_run_folder_checkpoints_and_metrics(corpus, tmp_path):
    result = train(small_config(corpus), tmp_path / "run")
    run = tmp_path / "run"
    assert {"best.pt", "last.pt", "config.yaml", "argv.txt", "environment.json", "metrics.jsonl", "summary.json"} <= \
        {p.name for p in run.iterdir()}
    best = load_checkpoint(run)  # a run folder stands for its best.pt
    assert best["config"] == small_config(corpus).to_dict()
    assert best["label_scaling"] == {"minimum": 1.0, "maximum": 7.0}
    assert best["attributes"] == ["arousal", "valence", "dominance"]
    assert best["provenance"]["sertool_version"] and "training" not in best
    assert best["metrics"]["average"] == pytest.approx(result.best["average"])
    validations = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()
                   if json.loads(line)["type"] == "valid"]
    assert len(validations) == 2 and max(v["ccc_average"] for v in validations) == pytest.approx(result.best["average"])
    assert Config.from_yaml(run / "config.yaml") == small_config(corpus)


def test_existing_run_folder_is_refused_without_force(corpus, tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "notes.txt").write_text("mine")
    with pytest.raises(SertoolError, match="--resume .* --force"):
        train(small_config(corpus), tmp_path / "run")
    assert (tmp_path / "run" / "notes.txt").read_text() == "mine"


def test_accumulated_micro_batches_equal_one_large_batch_for_a_decomposable_loss(corpus, tmp_path):
    """k micro-batches of b items give the same step as one batch of k·b items under a mean loss."""

    def mse_loss(output, targets, **_):
        loss = ((output.emotion - targets) ** 2).mean()
        return loss, {"total": loss.detach()}

    runs = []
    for name in ("accumulated", "single"):
        run = _Run(small_config(corpus), tmp_path / name, resume=False, argv=(),
                   context=loop.Distributed(), reporter=loop.Reporter())
        run.loss_fn = mse_loss
        runs.append(run)
    from sertool.data.dataset import collate

    items = [runs[0].dataset[index] for index in range(8)]
    runs[0]._optimizer_step([collate(items[:4]), collate(items[4:])])
    runs[1]._optimizer_step([collate(items)])
    for (name, a), b in zip(runs[0].model.named_parameters(), runs[1].model.parameters(), strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5, msg=name)
    fresh = _Run(small_config(corpus), tmp_path / "fresh", resume=False, argv=(),
                 context=loop.Distributed(), reporter=loop.Reporter())
    changed = any(not torch.equal(a, b)
                  for a, b in zip(runs[0].model.parameters(), fresh.model.parameters(), strict=True))
    assert changed  # the step did something


def test_min_batch_items_reaches_the_sampler_of_duration_batching(corpus, tmp_path):
    # A 2 s bound holds one 0.6-1.6 s clip; the lower bound of 6 wins.
    config = small_config(corpus, batch_size=0, max_batch_s=2.0, min_batch_items=6)
    run = _Run(config, tmp_path / "run", resume=False, argv=(), context=loop.Distributed(),
               reporter=loop.Reporter())
    sizes = [len(batch) for epoch in range(2) for batch in run.sampler.plan(epoch)]
    assert min(sizes) >= 6 and sum(sizes) == 2 * len(run.train_set)
    fixed = _Run(small_config(corpus, min_batch_items=6), tmp_path / "fixed", resume=False, argv=(),
                 context=loop.Distributed(), reporter=loop.Reporter())
    assert {len(batch) for batch in fixed.sampler.plan(0)} == {4}  # --batch-size batches are not bounded


def test_ox_options_reach_the_selection_and_the_sampler(corpus, tmp_path):
    def run(name, train_ox="keep", **options):
        config = small_config(corpus, sampling="undersample", **options)
        config.data.train_ox = train_ox
        config.seed = 3
        return _Run(config, tmp_path / name, resume=False, argv=(), context=loop.Distributed(),
                    reporter=loop.Reporter())

    from sertool.data.corpus import open_corpus
    from sertool.data.selection import select

    expected = select(open_corpus(corpus).utterances, train_ox="drop-as-many-non-ox", seed=3).train
    drawn_set = run("drawn", train_ox="drop-as-many-non-ox").train_set
    assert [utt.id for utt in drawn_set] == [utt.id for utt in expected]  # the run's seed draws the set
    # 16 Train utterances: N, H, A, S 3 each, O and X 2 each.
    balanced, outside = run("balanced"), run("outside", ox_outside_balance=True)
    codes = [utt.emo_class for utt in balanced.train_set]
    drawn = [codes[i] for batch in outside.sampler.plan(0) for i in batch]
    assert sorted(c for c in drawn if c in "OX") == sorted(c for c in codes if c in "OX")  # every O/X, every epoch
    assert sum(len(batch) for batch in outside.sampler.plan(0)) > sum(len(batch) for batch in balanced.sampler.plan(0))
    one = Counter(codes[i] for batch in run("one", ox_balance="one-class").sampler.plan(0) for i in batch)
    assert one == {"N": 3, "H": 3, "A": 3, "S": 3, "O": one["O"], "X": one["X"]} and one["O"] + one["X"] == 3


@pytest.mark.slow
@pytest.mark.parametrize("stop_step", [3, 4])  # mid-epoch, and exactly at the end of epoch 1
def test_resume_equals_an_uninterrupted_run(corpus, tmp_path, stop_step):
    config = small_config(corpus, epochs=3, checkpoint_every_steps=1)
    config.model.head_dropout = 0.3  # resuming must restore the RNG, or dropout masks would differ
    straight = train(config, tmp_path / "straight")
    with pytest.raises(KeyboardInterrupt):
        train(config, tmp_path / "resumed", reporter=InterruptAt(stop_step))
    assert load_checkpoint(tmp_path / "resumed", name="last.pt")["step"] == stop_step
    resumed = train(Config(), tmp_path / "resumed", resume=True)
    assert resumed.steps == straight.steps
    assert resumed.history == straight.history
    assert_same_state(model_state(tmp_path / "resumed"), model_state(tmp_path / "straight"))


@pytest.mark.parametrize(("epochs", "max_steps", "steps", "validated_at"), [
    (0, 6, 6, [4, 6]),     # a step budget alone: one epoch and a half, the cut epoch validated at its end
    (3, 6, 6, [4, 6]),     # the budget ends first
    (1, 100, 4, [4]),      # the epochs end first
])
def test_step_budget_ends_the_run_and_spans_the_schedule(corpus, tmp_path, epochs, max_steps, steps, validated_at):
    config = small_config(corpus, epochs=epochs, max_steps=max_steps)  # 16 utterances, 4 per step: 4 steps an epoch
    run = _Run(config, tmp_path / "plan", resume=False, argv=(), context=loop.Distributed(),
               reporter=loop.Reporter())
    assert run.schedule.total_steps == steps
    result = train(config, tmp_path / "run")
    assert result.steps == steps and result.stopped == "finished"
    assert [record["step"] for record in result.history] == validated_at
    lines = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert max(line["step"] for line in lines if line["type"] == "train") == steps


@pytest.mark.parametrize("stop_step", [5, 6])  # inside the cut epoch, and after the budget's last step
def test_resume_within_a_step_budget_equals_an_uninterrupted_run(corpus, tmp_path, stop_step):
    config = small_config(corpus, epochs=0, max_steps=6, checkpoint_every_steps=1)
    config.model.head_dropout = 0.3
    straight = train(config, tmp_path / "straight")
    with pytest.raises(KeyboardInterrupt):
        train(config, tmp_path / "resumed", reporter=InterruptAt(stop_step))
    resumed = train(Config(), tmp_path / "resumed", resume=True)
    assert (resumed.steps, resumed.history) == (straight.steps, straight.history)
    assert_same_state(model_state(tmp_path / "resumed"), model_state(tmp_path / "straight"))


class _FakeCudaGenerator:
    """The generator of one GPU, where the CPU machine has none."""

    def __init__(self) -> None:
        self.state = torch.zeros(16, dtype=torch.uint8)

    def get_state(self) -> torch.Tensor:
        return self.state

    def set_state(self, state: torch.Tensor) -> None:
        self.state = state


@case("checkpoints", "`--resume` of a `last.pt` that holds the random states of 2 GPUs, with one GPU visible or none "
      "(was: an IndexError from torch.cuda.set_rng_state_all)",
      "resumes: each process restores its own generators only (a GPU's on that GPU); the result equals the "
      "uninterrupted run")
@pytest.mark.parametrize("visible_gpus", [0, 1])
def test_resume_of_a_checkpoint_with_more_gpu_states_than_visible_gpus(corpus, tmp_path, monkeypatch, visible_gpus):
    """last.pt as sertool wrote it on a machine with 2 GPUs (one CUDA state per visible GPU), resumed on the CPU
    where torch sees no GPU, or one (mocked: torch.cuda's own code runs, on one fake generator)."""
    from sertool.store.checkpoints import save_checkpoint

    config = small_config(corpus, checkpoint_every_steps=1)
    config.model.head_dropout = 0.3
    train(config, tmp_path / "straight")
    with pytest.raises(KeyboardInterrupt):
        train(config, tmp_path / "resumed", reporter=InterruptAt(3))
    last = load_checkpoint(tmp_path / "resumed", name="last.pt")
    cpu_state = last["training"]["rng"]["ranks"][0]["torch"]
    last["training"]["rng"] = {"torch": cpu_state, "cuda": [torch.zeros(16, dtype=torch.uint8)] * 2}
    save_checkpoint(last, tmp_path / "resumed" / "last.pt")
    if visible_gpus:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: visible_gpus)
        monkeypatch.setattr(torch.cuda, "default_generators", tuple(_FakeCudaGenerator() for _ in range(visible_gpus)))
        monkeypatch.setattr(torch.cuda.random, "_lazy_call", lambda callback, **_: callback())
        monkeypatch.setattr(torch.cuda.random, "_lazy_init", lambda: None)
    train(Config(), tmp_path / "resumed", resume=True, device="cpu")
    assert_same_state(model_state(tmp_path / "resumed"), model_state(tmp_path / "straight"))


def test_a_run_needs_an_end(corpus, tmp_path):
    with pytest.raises(SertoolError, match="--epochs 0 and --max-steps 0"):
        train(small_config(corpus, epochs=0), tmp_path / "run")
    assert not (tmp_path / "run").exists()  # refused before any work
    with pytest.raises(SertoolError, match="train.max_steps must be ≥ 0"):
        train(small_config(corpus, max_steps=-1), tmp_path / "run2")


@case("training", "non-finite losses",
      "skipped and counted; several in a row stop the run, `last.pt` kept")
def test_nonfinite_losses_are_skipped_then_stop_the_run(corpus, tmp_path, monkeypatch):
    calls = {"n": 0}
    real_loss = loop.SERLoss.__call__

    def sometimes_nan(self, output, targets, **kwargs):
        calls["n"] += 1
        loss, parts = real_loss(self, output, targets, **kwargs)
        if calls["n"] == 2:  # one bad step, then recovery
            return loss * float("nan"), {**parts, "total": parts["total"] * float("nan")}
        return loss, parts

    monkeypatch.setattr(loop.SERLoss, "__call__", sometimes_nan)
    result = train(small_config(corpus), tmp_path / "one")
    assert result.skipped_steps == 1 and result.steps == 8

    def always_nan(self, output, targets, **kwargs):
        loss, parts = real_loss(self, output, targets, **kwargs)
        return loss * float("nan"), {**parts, "total": parts["total"] * float("nan")}

    monkeypatch.setattr(loop.SERLoss, "__call__", always_nan)
    with pytest.raises(SertoolError, match="3 optimiser steps in a row had a non-finite loss"):
        train(small_config(corpus, max_nonfinite_steps=3), tmp_path / "many")
    assert (tmp_path / "many" / "last.pt").is_file()


@case("training", "a NaN gradient under a finite loss (bf16 or fp32: no GradScaler; was: clipped into the weights, "
      "and `last.pt` overwritten with NaN weights)",
      "skipped and counted like a non-finite loss; several in a row stop the run, `last.pt` finite")
def test_nan_gradients_of_a_finite_loss_are_skipped_then_stop_the_run(corpus, tmp_path, monkeypatch):
    monkeypatch.setattr(loop.SERLoss, "__call__", nan_gradient_loss({2}))  # step 2's only micro-batch
    result = train(small_config(corpus, log_every_steps=1), tmp_path / "one")
    assert result.skipped_steps == 1 and result.steps == 8
    assert all(torch.isfinite(value).all() for value in model_state(tmp_path / "one").values())
    skipped = [json.loads(line) for line in (tmp_path / "one" / "metrics.jsonl").read_text().splitlines()
               if json.loads(line).get("skipped")]
    assert [(line["step"], line["skipped"]) for line in skipped] == [(2, "non-finite gradient")]

    monkeypatch.setattr(loop.SERLoss, "__call__", nan_gradient_loss(range(1, 1000)))
    with pytest.raises(SertoolError, match="3 optimiser steps in a row had a non-finite loss or gradient "
                                           r"\(step 3: its gradient\)"):
        train(small_config(corpus, max_nonfinite_steps=3, checkpoint_every_steps=1), tmp_path / "many")
    assert all(torch.isfinite(value).all() for value in model_state(tmp_path / "many").values())


@pytest.mark.slow
def test_two_process_ddp_equals_one_process_with_the_same_effective_batch(corpus, tmp_path):
    """2 ranks × 1 micro-batch per step == 1 process × 2 accumulated micro-batches (gloo on CPU); with the
    floor blend, whose statistics each rank computes a share of (each clip once in the job), then reads all
    of from the cache."""
    single = small_config(corpus, accum_steps=2)
    single.model.floor_blend = True
    train(single, tmp_path / "single")
    ddp = small_config(corpus, accum_steps=1)
    ddp.model.floor_blend = True
    ddp.data.cache_dir = str(tmp_path / "ddp-cache")  # empty: the statistics are computed in this run
    assert_ranks_agree(run_ranks(ddp, tmp_path / "ddp"))
    assert_same_state(model_state(tmp_path / "ddp"), model_state(tmp_path / "single"), atol=1e-5)
    shares = [load_file(path)["statistics"] for path in (tmp_path / "ddp-cache" / "utterance-stats").glob("*/*")]
    clips = [utt for utt in open_corpus(str(corpus)).utterances if utt.split in ("Train", "Development")]
    assert len(shares) == 2 and sorted(map(len, shares)) == [len(clips) // 2, len(clips) - len(clips) // 2]
    assert load_checkpoint(tmp_path / "ddp")["metrics"]["average"] == pytest.approx(
        load_checkpoint(tmp_path / "single")["metrics"]["average"], abs=1e-5)


def test_resume_drops_log_lines_the_checkpoint_does_not_hold(tmp_path):
    from sertool.training.run_folder import truncate_metrics

    lines = [{"type": "train", "step": 5}, {"type": "train", "step": 6}, {"type": "valid", "step": 6},
             {"type": "train", "step": 7}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines) + '{"type": "tr')
    # Killed after validating at step 6 but before last.pt recorded that validation.
    truncate_metrics(tmp_path, step=6, validations=0)
    kept = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert kept == lines[:2]


def test_per_attribute_selection_keeps_each_attributes_best_checkpoint(corpus, tmp_path):
    result = train(small_config(corpus, epochs=3, select_best="per-attribute"), tmp_path / "run")
    for name in ("arousal", "valence", "dominance"):
        kept = load_checkpoint(tmp_path / "run", name=f"best_{name}.pt")
        assert kept["metrics"][name] == max(v[f"ccc_{name}"] for v in result.history)


@case("training", "`kill -9` during training at several points, then `--resume`",
      "final weights, metrics and log equal an uninterrupted run; no temporary file left")
def test_resume_removes_temporaries_a_killed_write_left(corpus, tmp_path):
    config = small_config(corpus, epochs=1)
    train(config, tmp_path / "run")
    stale = tmp_path / "run" / ".last.pt.k3j2.tmp"
    stale.write_bytes(b"half a checkpoint")
    train(Config(), tmp_path / "run", resume=True)
    assert not stale.exists() and (tmp_path / "run" / "last.pt").is_file()


def test_an_mm_run_without_transcripts_reports_asr_progress_before_training(tmp_path):
    """A long ASR pass in `train` shows progress: the reporter hears about it as it happens."""
    import shutil

    from sertool.training.reporter import Reporter
    from tests.tiny_asr import save_tiny_asr
    from tests.tiny_text import save_tiny_text_encoder

    corpus = write_learnable_corpus(tmp_path / "c", per_split={"Train": 8, "Development": 4})
    shutil.rmtree(corpus / "Transcripts")
    config = small_config(corpus, epochs=1)
    config.model.text = True
    config.model.text_model = str(save_tiny_text_encoder(tmp_path / "text"))
    config.data.asr = str(save_tiny_asr(tmp_path / "asr"))
    config.data.cache_dir = str(tmp_path / "cache")

    class Recorder(Reporter):
        def __init__(self) -> None:
            self.events: list[tuple] = []

        def progress(self, task: str, done: int, total: int) -> None:
            self.events.append(("progress", task, done, total))

        def start(self, summary) -> None:
            self.events.append(("start",))

    recorder = Recorder()
    train(config, tmp_path / "run", reporter=recorder)
    asr = [event for event in recorder.events if event[0] == "progress" and "ASR" in event[1]]
    assert asr and asr[-1][2:] == (12, 12)  # every missing transcript (8 + 4), done
    assert recorder.events.index(asr[-1]) < recorder.events.index(("start",))


def _fingerprint_line_by_line(train_set, valid_set) -> str:
    """Reference: the fingerprint as run folders recorded it until now, one ``json.dumps`` per utterance."""
    import hashlib

    digest = hashlib.sha256()
    for role, utterances in (("train", train_set), ("valid", valid_set)):
        for utt in sorted(utterances, key=lambda item: item.id):
            digest.update(json.dumps([role, utt.id, round(utt.duration_s, 3), utt.arousal, utt.valence, utt.dominance,
                                      utt.emo_class, utt.speaker, utt.gender]).encode())
    return digest.hexdigest()


@pytest.mark.parametrize("seed", range(8))
def test_data_fingerprint_is_byte_compatible_with_existing_run_folders(seed):
    """``--resume`` compares the fingerprint with the one a run recorded, so it must not change: awkward ids,
    speakers and numbers (None, NaN, infinities, -0.0, tiny and huge floats, numpy floats, whole numbers),
    and text that looks like the JSON around it (quotes, backslashes, brackets, "], [", non-ASCII)."""
    import numpy as np

    from sertool.data.records import Utterance
    from sertool.training.run_folder import data_fingerprint

    rng = np.random.default_rng(seed)
    texts = ["MSP-PODCAST_0001_0002.wav", 'a"b', "back\\slash\\", '], ["train", ', '"], ["valid", "', "ünïcödé",
             "雪", "emoji 🎙", "tab\there", "new\nline", "", "[", "]", "null", "NaN"]
    numbers = [None, 1.0, 3.5, 6.999, 0.1 + 0.2, float("nan"), float("inf"), -float("inf"), -0.0, 1e-7, 1e300,
               np.float64(2.25), 4, 2.0004999]

    def pick(values):
        return values[int(rng.integers(len(values)))]

    def utterances(count, split):
        return [Utterance(id=f"{pick(texts)}{index}", audio_path=Path("/corpus") / f"{index}.wav", split=split,
                          duration_s=pick([0.5, 2.0005, 11.123456, 3, np.float64(7.77777), 1e-4]),
                          arousal=pick(numbers), valence=pick(numbers), dominance=pick(numbers),
                          emo_class=pick([None, "A", "N", "X", 'q"']), speaker=pick([None, "12", *texts]),
                          gender=pick([None, "Male", "Female", *texts]))
                for index in range(count)]

    train_set, valid_set = utterances(int(rng.integers(0, 60)), "Train"), utterances(int(rng.integers(0, 30)), "Dev")
    assert data_fingerprint(train_set, valid_set) == _fingerprint_line_by_line(train_set, valid_set)
    assert data_fingerprint([], []) == _fingerprint_line_by_line([], [])


# ---- DDP: waiting for a slow rank ------------------------------------------------------------------------------

def _slow_checkpoint_writes(rank: int, name: str, seconds: float) -> None:
    """In rank 0: writing checkpoint ``name`` takes ``seconds`` more (several GB on slow storage)."""
    if rank != 0:
        return
    real_save = loop.save_checkpoint

    def slow_save_checkpoint(payload, path):
        if Path(path).name == name:
            time.sleep(seconds)
        real_save(payload, path)

    loop.save_checkpoint = slow_save_checkpoint


def _slow_best_pt(rank: int) -> None:
    _slow_checkpoint_writes(rank, "best.pt", 6.0)


def _slow_last_pt(rank: int) -> None:
    _slow_checkpoint_writes(rank, "last.pt", 3.0)


def _slow_cache_fills(rank: int) -> None:
    """In rank 1: each of its shares of the set-up's cache fills takes 6 s more."""
    if rank != 1:
        return
    real_fill_in_shares = loop.distributed.fill_in_shares

    def slow_fill_in_shares(fill, items, context):
        real_fill_in_shares(lambda share: (time.sleep(6.0), fill(share)), items, context)

    loop.distributed.fill_in_shares = slow_fill_in_shares


@pytest.mark.slow
@case("training", "under torchrun, the other ranks waiting while rank 0 writes a large checkpoint (was: no limit "
      "given, so NCCL's 10 minutes, which a checkpoint of several GB on slow storage can pass)",
      "they wait up to `--ddp-timeout-s` (default 2 hours); past it, one line naming the option")
@case("training", "under torchrun, one rank's share of a cache fill taking longer than `--ddp-timeout-s` more than "
      "another's", "the others wait for it: the set-up's waits have no limit")
def test_a_rank_waits_for_the_others_up_to_the_ddp_timeout(corpus, tmp_path):
    """Rank 0 takes 6 s more to write best.pt: with --ddp-timeout-s 2 rank 1 gives up with one line naming the
    option; with 60 the run ends well. Rank 1 taking 6 s more for each cache fill is no failure at 2."""
    config = small_config(corpus, epochs=1)
    config.train.ddp_timeout_s = 2
    ends = run_ranks(config, tmp_path / "short", prepare=_slow_best_pt, allow_dead=True)
    assert ends[1].get("error", "").startswith("a rank waited longer than --ddp-timeout-s 2 s"), ends[1]
    assert all("error" not in end for end in run_ranks(config, tmp_path / "slow-set-up", prepare=_slow_cache_fills))
    config.train.ddp_timeout_s = 60
    assert all("error" not in end for end in run_ranks(config, tmp_path / "long", prepare=_slow_best_pt))
    assert (tmp_path / "long" / "best.pt").is_file()


@pytest.mark.slow
@case("training", "non-finite losses stopping a DDP run while rank 0 writes `last.pt` (was: the other ranks ended at "
      "once; under torchrun a rank that ends has torchrun stop the others, and kill them 30 s later, mid-write)",
      "every rank waits until `last.pt` is written, then each ends with the one-line error")
def test_a_ddp_run_stopped_by_nonfinite_losses_ends_no_rank_before_last_pt_is_written(corpus, tmp_path):
    """A learning rate that sends the weights to infinity in the first step: the next two steps are not finite
    and the run stops. Rank 0 takes 3 s more to write last.pt; no rank may end before it is written."""
    ends = run_ranks(small_config(corpus, batch_size=2, lr_heads=1e30, max_nonfinite_steps=2), tmp_path / "run",
                     prepare=_slow_last_pt)
    assert all(end.get("error", "").startswith("stopped: 2 optimiser steps in a row had a non-finite")
               for end in ends), ends
    written = (tmp_path / "run" / "last.pt").stat().st_mtime
    assert all(end["ended_at"] >= written for end in ends)
