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

.PHONY: demo test lint bench bench-io bench-monitor venv peers mosquitto clean plugin-archive

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev,train]'
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

# LayerWatch's OctoPrint plugin (integrations/octoprint) in the test OctoPrint, as a user installs it: pip into
# OctoPrint's own environment (with its one dependency, paho-mqtt). The plugin's test reinstalls the working tree's
# copy offline before it starts OctoPrint, so this step only brings paho-mqtt and the build tools
PLUGIN_FILES := $(shell find integrations/octoprint -type f -not -path '*/__pycache__/*' -not -path '*.egg-info*')
$(PEERS)/octoprint/.plugin-installed: $(PEERS)/octoprint/.installed $(PLUGIN_FILES)
	$(PEERS)/octoprint/bin/python -m pip install -q ./integrations/octoprint
	touch $@

$(PEERS)/moonraker/.installed:
	$(PYTHON) -m venv $(PEERS)/moonraker
	$(PEERS)/moonraker/bin/python -m pip install -q 'moonraker==$(MOONRAKER_VERSION)'
	touch $@

# Debian packages the tests use: Mosquitto (the broker), hdf5-tools (h5dump reads our records), Chromium
# (the dashboard tests drive it with Playwright; no browser is downloaded) and strace (a crafted record's
# link to a file outside must never be opened: the tests trace every open)
DEBS := mosquitto hdf5-tools chromium strace
mosquitto:
	@if { command -v mosquitto || [ -x /usr/sbin/mosquitto ]; } >/dev/null && command -v h5dump >/dev/null \
		&& command -v chromium >/dev/null && command -v strace >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ]; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(DEBS) >/dev/null; \
	else echo "make: the tests need Debian's $(DEBS): sudo apt-get install $(DEBS)" >&2; exit 1; fi

peers: mosquitto $(PEERS)/octoprint/.installed $(PEERS)/octoprint/.plugin-installed $(PEERS)/moonraker/.installed

# LAYERWATCH_REQUIRE_PEERS=1: a missing peer fails the run instead of skipping its tests
test: lint peers
	LAYERWATCH_REQUIRE_PEERS=1 $(BIN)/python -m pytest

# eval_heldout.py exits 1 while a target is not met: the figures after it are still measured ('-')
bench: $(STAMP)
	$(BIN)/python bench/bench_inference.py
	-$(BIN)/python bench/eval_heldout.py
	-$(BIN)/python bench/eval_heldout.py --plate --reference 3
	$(BIN)/python bench/eval_fit.py
	$(BIN)/python bench/eval_roi.py
	$(BIN)/python bench/eval_lighting.py
	$(BIN)/python bench/eval_lighting.py --plate --reference 3

bench-io: $(STAMP) peers
	$(BIN)/python bench/bench_mqtt_transport.py
	$(BIN)/python bench/bench_pause_octoprint.py

bench-monitor: $(STAMP) peers
	$(BIN)/python bench/bench_e2e.py
	$(BIN)/python bench/bench_record.py
	$(BIN)/python bench/bench_metrics.py
	$(BIN)/python bench/eval_policy.py
	$(BIN)/python bench/bench_replay.py
	$(BIN)/python bench/bench_dashboard.py
	$(BIN)/python bench/bench_report.py

clean:
	rm -rf $(VENV) $(PEERS) layerwatch-demo .pytest_cache .mypy_cache .ruff_cache

# The OctoPrint plugin's release archive (the committed sources at HEAD): its URL goes into OctoPrint's Plugin Manager,
# "... from URL", which pip-installs it into OctoPrint's environment
plugin-archive:
	mkdir -p dist
	git archive --format=zip --prefix=OctoPrint-LayerWatch/ -o dist/OctoPrint-LayerWatch.zip HEAD:integrations/octoprint
	@echo "dist/OctoPrint-LayerWatch.zip"
