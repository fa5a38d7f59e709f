# Two commands on a fresh machine:
#   make run    train (on embedded data), export behind the parity gate, serve on http://127.0.0.1:3000
#   make test   the test suite (what CI runs)
#   make bench  the benchmark against FastAPI and Triton (needs apt for wrk)
# Artifacts live under runs/ (EE559_RUNS); the BentoML model store under runs/bentoml (BENTOML_HOME).

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TRITON_PYTHON ?= /usr/bin/python3.11
HOST ?= 127.0.0.1
PORT ?= 3000
export EE559_RUNS ?= $(CURDIR)/runs
export BENTOML_HOME ?= $(EE559_RUNS)/bentoml
export BENTOML_DO_NOT_TRACK ?= true
# RETRAIN=1 trains and exports again even when a checkpoint / stored model exists.
REUSE := $(if $(RETRAIN),,--if-missing)

.PHONY: run install train export serve test loadtest bench textbench soak container-test audit build clean

run: export
	@echo "Serving every exported model on http://$(HOST):$(PORT) (POST /classify /explain /segment /denoise /embed /reconstruct /generate /generate_text, /v2 Open Inference Protocol, GET /readyz, GET /metrics)"
	$(VENV)/bin/bentoml serve service.service:EE559 --host $(HOST) --port $(PORT)

install: $(VENV)/.installed

$(VENV)/.installed: requirements.txt requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $@

train: install
	$(PY) -m training all $(REUSE)

export: train
	$(PY) -m export all $(REUSE)

serve: install
	$(VENV)/bin/bentoml serve service.service:EE559 --host $(HOST) --port $(PORT)

test: install
	$(PY) -m pytest -q

loadtest: install
	$(PY) -m loadtests --host http://$(HOST):$(PORT)

bench: export
	command -v wrk >/dev/null || (apt-get update -q && apt-get install -y -q wrk)
	$(PY) -m pip install --quiet -r requirements-bench.txt
	# PyTriton's Python-backend stub links the system libpython3.11: its venv must use that interpreter.
	test -x .venv-triton/bin/python || ($(TRITON_PYTHON) -m venv .venv-triton && .venv-triton/bin/pip install --quiet -r requirements-triton.txt)
	$(PY) -m loadtests.bench $(BENCH_ARGS)

# The 30-minute soak (EE559_SOAK_SECONDS to change it): memory growth and failures at 70% load.
soak: install
	$(PY) -m pytest -q -s -m slow tests/service/test_soak.py

# The container, really built with `bentoml containerize --backend podman` and run (as root:
# installs podman, runc and debootstrap from Debian's packages; ~10 minutes the first time).
container-test: install
	command -v podman >/dev/null || (apt-get update -q && apt-get install -y -q podman runc debootstrap)
	$(PY) -m pytest -q -s -m slow tests/test_container.py

textbench: export
	$(PY) -m loadtests.textbench $(TEXTBENCH_ARGS)

# Known vulnerabilities of the pinned, installed packages (needs PyPI's JSON API or OSV).
audit: install
	test -x .venv-audit/bin/pip-audit || (python3.11 -m venv .venv-audit && .venv-audit/bin/pip install --quiet pip-audit==2.9.0)
	.venv-audit/bin/pip-audit --path $(VENV)/lib/python3.11/site-packages --desc on

build: export
	$(VENV)/bin/bentoml build

clean:
	rm -rf runs
