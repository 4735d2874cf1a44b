# sertool — every target installs what it needs by itself (scripts/install.sh).
#   make demo   the whole story on the built-in demo corpus: data, two systems, evaluation, ensemble, submission
#   make test   the test suite (what CI runs); make test-quick leaves out the tests marked slow
#   make lint   ruff (ruff.toml) on sertool/, tests/ and bench/, mypy (setup.cfg [mypy]) on sertool/ (CI runs it after the tests)
#   make plain-install   the README's plain-pip install in a fresh venv, then data demo, train, predict (CI runs it last)
#   make bench  the performance benchmarks (docs/performance.md)
#   make realsize   the paper's systems at real size on the CPU, 2 steps each, against the memory plan (about an hour)
#   make sweep  the generated-input tests with many more examples than make test runs (docs/reliability.md)
#   make reproduce   the paper's experiment grid (docs/reproduce.md)
VENV ?= .venv
PY := $(VENV)/bin/python
SERTOOL := $(VENV)/bin/sertool
DEMO ?= demo
STAMP := $(VENV)/.sertool-installed

.PHONY: install test test-quick lint plain-install demo bench realsize reproduce sweep clean

install: $(STAMP)

# Re-run the install only when what it reads changes: `make install` is quick when already done.
$(STAMP): setup.cfg setup.py scripts/install.sh
	bash scripts/install.sh $(VENV)
	@touch $@

test: install
	$(PY) -m pytest -q

# The suite without its tests marked slow, for a check while developing; CI runs make test, all of it.
# It leaves out (docs/architecture.md, "Testing"): several processes (DDP with 2 gloo ranks, torchrun, signals
# and kill -9 to train processes, racing exports); resume = uninterrupted in its long runs; the invariant
# matrix's half precision on the tiny WavLM and Whisper; the floor blend's end-to-end training runs; whole
# scripts and grids (bench/gpu_check.py on the CPU, reproduce's seeds and held-out cells, the released models'
# ensemble from the CLI, a 10-minute file). pytest -m slow runs those alone.
test-quick: install
	$(PY) -m pytest -q -m "not slow"

# Every command and the Python API given drawn option values and hostile paths (tests/test_generated_input.py):
# make test runs a few examples per command; this runs SWEEP_EXAMPLES each (about 10 min for 300 on 2 cores).
SWEEP_EXAMPLES ?= 300
sweep: install
	SERTOOL_SWEEP_EXAMPLES=$(SWEEP_EXAMPLES) $(PY) -m pytest -q tests/test_generated_input.py

lint: install
	$(PY) -m ruff check sertool tests bench
	$(PY) -m mypy

# Not through .venv: a fresh venv in a temporary folder, torch's CPU build and `pip install '.[plot,demo,opensmile]'`
# as the README says, then the first commands a user runs, from outside the checkout (scripts/plain_install_check.sh).
plain-install:
	bash scripts/plain_install_check.sh

# The paper's grid, 3 seeds per system (docs/reproduce.md). Default: demo scale on the demo corpus (CPU, ≤ 30 min);
# with MSP_ROOT=/path/to/MSP-Podcast: the real systems (GPUs). Re-running skips finished systems.
# TABLES=variants (or all): the variants' tables, what the paper leaves open and what the release does differently.
MSP_ROOT ?=
TABLES ?= paper
reproduce: install
ifeq ($(MSP_ROOT),)
	$(MAKE) $(DEMO_LABELS)
	$(SERTOOL) reproduce --corpus $(DEMO_CORPUS) --scale demo --seeds 3 --tables $(TABLES) --out results/demo
	$(SERTOOL) data speakers --corpus $(DEMO_CORPUS) --speaker-model log-mel-stats --out results/demo/figure2.png --force
else
	$(SERTOOL) reproduce --corpus $(MSP_ROOT) --scale real --seeds 3 --tables $(TABLES) --out results/real
	$(SERTOOL) data speakers --corpus $(MSP_ROOT) --out results/real/figure2.png --force
endif

# Benchmarks (not tests): ratios against a reference measured in the same run; writes bench/results.json.
bench: install
	$(PY) bench/bench.py --out bench/results.json

# The paper's systems at real size (random weights of the real shapes, nothing downloaded) on the CPU, 2 optimiser
# steps each, each in a process of its own once 16 GB are available: wall time and peak resident memory beside the
# memory plan's estimate (docs/performance.md). Not part of bench or test: about an hour on 2 cores, 8.3 GB of disk
# for the models. Writes $(REALSIZE)/realsize.json and prints a table; a re-run skips the systems already measured.
REALSIZE ?= realsize
realsize: install
	nice -n 5 $(PY) bench/real_size.py --out $(REALSIZE)

# ---- the demo: each step is a file target, so an interrupted `make demo` continues where it stopped ----
DEMO_CORPUS := $(DEMO)/corpus
DEMO_LABELS := $(DEMO_CORPUS)/Labels/labels_consensus.csv
AUDIO_RUN := $(DEMO)/runs/fbank-gender
TEXT_RUN := $(DEMO)/runs/mm-fbank

# Make deletes the files a chain of pattern rules builds on the way ("intermediate" files) once the final
# target is made: it removed both checkpoints after announcing the ensemble that needs them. No file this
# Makefile builds is disposable, so none is intermediate.
.SECONDARY:

demo: install $(DEMO)/submission.csv
	@echo
	@echo "demo finished — look at:"
	@echo "  plots:       $(DEMO)/plots/fbank-gender.png  $(DEMO)/plots/mm-fbank.png"
	@echo "  curves:      $(AUDIO_RUN)/curves.png  $(TEXT_RUN)/curves.png  (training loss, validation CCC)"
	@echo "  predictions: $(DEMO)/predictions/   (Development, with labels beside them)"
	@echo "  ensemble:    $(DEMO)/ensemble.json  (evaluate/predict accept it as a checkpoint)"
	@echo "  floor:       $(DEMO)/baseline/      (sertool baseline: ridge on acoustic statistics)"
	@echo "  submission:  $(DEMO)/submission.csv (Test3, challenge format)"

$(DEMO_LABELS): | install
	$(SERTOOL) data demo $(DEMO_CORPUS) --force
	$(SERTOOL) data info $(DEMO_CORPUS)

$(DEMO)/runs/%/best.pt: sertool/configs/demo/%.yaml $(DEMO_LABELS)
	$(SERTOOL) train --config $< --corpus $(DEMO_CORPUS) --out $(DEMO)/runs/$* --force

$(DEMO)/predictions/%.csv: $(DEMO)/runs/%/best.pt
	@mkdir -p $(DEMO)/predictions $(DEMO)/plots
	$(SERTOOL) evaluate $(DEMO)/runs/$* --corpus $(DEMO_CORPUS) --split Development \
		--out $@ --plot $(DEMO)/plots/$*.png --force

# The floor every trained system is compared with (docs/training.md): its Test1 predictions as a CSV.
$(DEMO)/baseline/Test1.csv: $(DEMO_LABELS)
	$(SERTOOL) baseline --corpus $(DEMO_CORPUS) --out $(DEMO)/baseline --force

# The paper's best ensemble, at demo scale: the audio system with gender averaged with the MM system;
# on Test1, the floor is scored right after them, on the same utterances.
$(DEMO)/ensemble.json: $(DEMO)/predictions/fbank-gender.csv $(DEMO)/predictions/mm-fbank.csv \
		$(DEMO)/baseline/Test1.csv $(AUDIO_RUN)/best.pt $(TEXT_RUN)/best.pt
	$(SERTOOL) ensemble $(AUDIO_RUN) $(TEXT_RUN) --corpus $(DEMO_CORPUS) --split Development --save $@ --force
	$(SERTOOL) ensemble $(AUDIO_RUN) $(TEXT_RUN) --corpus $(DEMO_CORPUS) --split Test1
	$(SERTOOL) evaluate $(DEMO)/baseline/Test1.csv --corpus $(DEMO_CORPUS) --split Test1

$(DEMO)/submission.csv: $(DEMO)/ensemble.json
	$(SERTOOL) predict $(DEMO)/ensemble.json --corpus $(DEMO_CORPUS) --split Test3 --submission $@ --force

clean:
	rm -rf $(DEMO) $(REALSIZE) .pytest_cache
