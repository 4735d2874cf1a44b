# sertool — every target installs what it needs by itself (see scripts/install.sh).
VENV ?= .venv
PY := $(VENV)/bin/python
SERTOOL := $(VENV)/bin/sertool
DEMO_DIR ?= demo
STAMP := $(VENV)/.sertool-installed

.PHONY: install test demo clean

install: $(STAMP)

# Re-run the install only when what it reads changes: `make install` is quick when already done.
$(STAMP): setup.cfg setup.py scripts/install.sh
	bash scripts/install.sh $(VENV)
	@touch $@

test: install
	$(PY) -m pytest -q

# The main job end to end on the built-in demo corpus (grows with the training issues).
demo: install
	$(SERTOOL) data demo $(DEMO_DIR)/corpus --force
	$(SERTOOL) data info $(DEMO_DIR)/corpus

clean:
	rm -rf $(DEMO_DIR) .pytest_cache
