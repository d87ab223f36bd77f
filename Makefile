# Two commands do all the set-up (see README): `make demo` and `make test`.
# Each creates or reuses the virtual environment in .venv itself.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.layerwatch-installed

# Real peers for the integration tests, each in its own virtual environment (they pin Flask,
# Tornado and others that clash with ours), and Debian's Mosquitto.
PEERS ?= .peers
OCTOPRINT_VERSION ?= 1.11.8
MOONRAKER_VERSION ?= 0.11.0

.PHONY: demo test lint bench bench-io venv peers mosquitto clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/layerwatch demo

lint: $(STAMP)
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .
	$(BIN)/mypy

$(PEERS)/octoprint/.installed:
	$(PYTHON) -m venv $(PEERS)/octoprint
	$(PEERS)/octoprint/bin/python -m pip install -q 'octoprint==$(OCTOPRINT_VERSION)'
	touch $@

$(PEERS)/moonraker/.installed:
	$(PYTHON) -m venv $(PEERS)/moonraker
	$(PEERS)/moonraker/bin/python -m pip install -q 'moonraker==$(MOONRAKER_VERSION)'
	touch $@

mosquitto:
	@if command -v mosquitto >/dev/null || [ -x /usr/sbin/mosquitto ]; then :; \
	elif [ "$$(id -u)" = 0 ]; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mosquitto >/dev/null; \
	else echo "make: Mosquitto is needed for the tests: sudo apt-get install mosquitto" >&2; exit 1; fi

peers: mosquitto $(PEERS)/octoprint/.installed $(PEERS)/moonraker/.installed

# LAYERWATCH_REQUIRE_PEERS=1: a missing peer fails the run instead of skipping its tests
test: lint peers
	LAYERWATCH_REQUIRE_PEERS=1 $(BIN)/python -m pytest

bench: $(STAMP)
	$(BIN)/python bench/bench_inference.py
	$(BIN)/python bench/eval_heldout.py

bench-io: $(STAMP) peers
	$(BIN)/python bench/bench_mqtt_transport.py
	$(BIN)/python bench/bench_pause_octoprint.py

clean:
	rm -rf $(VENV) $(PEERS) layerwatch-demo .pytest_cache .mypy_cache .ruff_cache
