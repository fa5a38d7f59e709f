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

.PHONY: run install lock lint train export serve test loadtest bench textbench soak fuzz container-test audit build clean

run: export
	@echo "Serving every exported model on http://$(HOST):$(PORT) (POST /classify /explain /segment /denoise /embed /reconstruct /generate /generate_text, GET /models, /v2 Open Inference Protocol, GET /readyz, GET /metrics, GET /docs.json)"
	$(VENV)/bin/bentoml serve service.service:EE559 --host $(HOST) --port $(PORT)

install: $(VENV)/.installed

# requirements-dev.txt is the full lock: every pin of the other locks is in it, at the same version,
# but the CPU image's ONNX Runtime (onnxruntime) and the GPU image's CUDA wheels (nvidia-*).
$(VENV)/.installed: requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $@

# Lock files. The requirements*.in are the inputs, each pin written once with the reason for it;
# the requirements*.txt beside each is its lock, compiled by pip-tools (every package pinned, with
# `# via` comments). Run `make lock` after changing a .in file, and commit both;
# `make lock LOCK_ARGS=--upgrade-package=NAME` moves one unpinned dependency. The order matters:
# each .in is compiled under the locks before it (its -c lines), so a package has one version in
# every lock. pip-compile takes find-links and indexes from pip's configuration (and keeps them out
# of the locks) but not pip's `constraint` setting, which is passed on here. Where pip's
# configuration offers torch's CPU wheel (2.13.0+cpu), pip-compile picks it; the lock keeps
# torch==2.13.0, which pip satisfies with that wheel here and with PyPI's elsewhere.
LOCKS := requirements-serve-cpu requirements-serve-gpu requirements-loadtest requirements requirements-dev
PIP_COMPILE = CUSTOM_COMPILE_COMMAND="make lock" $(VENV)/bin/pip-compile --quiet --strip-extras \
	--no-emit-index-url --no-emit-find-links $(LOCK_ARGS) \
	$(addprefix --constraint ,$(shell $(PY) -m pip config list 2>/dev/null | sed -n "s/^[^.]*\.constraint='\(.*\)'$$/\1/p"))

lock: install
	set -e; for name in $(LOCKS); do \
		$(PIP_COMPILE) --output-file $$name.txt $$name.in; \
		sed -i -E 's/^(torch==[^ +]+)\+[[:alnum:].]+$$/\1/' $$name.txt; \
	done

# Two models train at once, each in its own process on half the cores, judges and the longest
# first: small models use two threads poorly (an epoch on 2 threads against 1: LeNet 1.6x faster,
# the MLP 1.2x, the U-Net 1.6x, the DCGAN 1.6x; 2026-11-27). TRAIN_JOBS=1: one after the other.
# Each trains in bf16 mixed precision where the CPU has it (AMX or AVX512-BF16; `make stepbench`).
TRAIN_JOBS ?= 2
train: install
	$(PY) -m training all $(REUSE) --jobs $(TRAIN_JOBS)

export: train
	$(PY) -m export all $(REUSE)

serve: install
	$(VENV)/bin/bentoml serve service.service:EE559 --host $(HOST) --port $(PORT)

test: install ops-tools
	$(PY) -m pytest -q

# Debian's prometheus package (promtool, prometheus) for the rules' tests and the real Prometheus
# the default suite starts (tests/service/test_prometheus.py); installed as root where missing.
# Elsewhere those tests skip, unless EE559_REQUIRE_OPS_TOOLS=1 (CI) makes them fail.
.PHONY: ops-tools
ops-tools:
	@command -v promtool >/dev/null && command -v prometheus >/dev/null || \
		{ [ "$$(id -u)" = 0 ] && apt-get update -q && apt-get install -y -q --no-install-recommends prometheus; } || \
		echo "make: Debian's prometheus package is missing and cannot be installed (not root): the Prometheus tests will skip"

# ruff (lint and format) over everything, mypy over the shared package and the service (CI runs it).
lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

loadtest: install
	$(PY) -m loadtests --host http://$(HOST):$(PORT)

bench: export
	command -v wrk >/dev/null || (apt-get update -q && apt-get install -y -q wrk)
	$(PY) -m pip install --quiet -r requirements-bench.txt
	# PyTriton's Python-backend stub links the system libpython3.11: its venv must use that interpreter.
	test -x .venv-triton/bin/python || $(TRITON_PYTHON) -m venv .venv-triton
	.venv-triton/bin/pip install --quiet -r requirements-triton.txt  # every time: a venv made before a pin moved follows it
	$(PY) -m loadtests.bench $(BENCH_ARGS)

# The 30-minute soak (EE559_SOAK_SECONDS to change it): memory growth and failures at 70% load.
soak: install
	$(PY) -m pytest -q -s -m slow tests/service/test_soak.py

# Fuzzing at scale against one real server: schemathesis over /docs.json with FUZZ_OPENAPI_EXAMPLES
# per operation and phase, and tests/service/test_fuzz.py's generators (binary bodies included) with
# FUZZ_EXAMPLES per route and body kind (its slow variant; `-m` picks it and the schemathesis run).
FUZZ_EXAMPLES ?= 1000
FUZZ_OPENAPI_EXAMPLES ?= 300
fuzz: install
	EE559_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) EE559_OPENAPI_EXAMPLES=$(FUZZ_OPENAPI_EXAMPLES) $(PY) -m pytest -q -s \
		-m "slow or not slow" -k "schemathesis or at_scale" tests/service/test_openapi.py tests/service/test_fuzz.py

# Both images (bentofile.yaml, bentofile-gpu.yaml), really built with `bentoml containerize
# --backend podman` and run, their sizes printed (as root: installs podman, runc and debootstrap
# from Debian's packages; the GPU image downloads ~1.5 GB of CUDA wheels and is ~3.7 GB).
container-test: install
	command -v podman >/dev/null || (apt-get update -q && apt-get install -y -q podman runc debootstrap)
	$(PY) -m pytest -q -s -m slow tests/test_container.py

# The playground (service/playground/) in headless Chromium against a real `bentoml serve` (as root:
# installs Debian's chromium and chromium-driver); its screenshots go to docs/images/playground-*.png.
.PHONY: browser-test
browser-test: install
	command -v chromium >/dev/null && command -v chromedriver >/dev/null || (apt-get update -q && apt-get install -y -q chromium chromium-driver)
	EE559_SCREENSHOTS=$(CURDIR)/docs/images $(PY) -m pytest -q -s -m "slow or not slow" tests/service/test_playground.py

# Operations (service/deploy/) alone (`make test` runs the same tests): the Prometheus rules through
# `promtool check rules` and `promtool test rules`, a real Prometheus scraping a real `bentoml serve`
# and answering every query of the rules, the Grafana dashboard and the Prometheus adapter (trains
# two models on the quick preset first), the dashboard and compose file offline, the Kubernetes
# overlays rendered by `kubectl kustomize` and validated (skipped where kubectl is absent).
.PHONY: ops-test
ops-test: install ops-tools
	cd service/deploy/prometheus && promtool check rules rules.yml && promtool test rules rules_test.yml
	$(PY) -m pytest -q -m "slow or not slow" tests/service/test_prometheus.py tests/service/test_grafana.py \
		tests/service/test_compose.py tests/service/test_kubernetes.py

# Text generation: batch-1 decoding in-process (ORT with its cache vs re-run vs PyTorch), then under
# load through a real `bentoml serve` with one worker (c = 1, 4, 16, 64 streamed generations at
# once against the same requests one at a time: continuous batching's gain; loadtests/textload.py).
textbench: export
	$(PY) -m loadtests.textbench $(TEXTBENCH_ARGS)
	$(PY) -m loadtests.textload $(TEXTLOAD_ARGS)

# One training step of every model in fp32 and in bf16 mixed precision, side by side in one run
# (training/stepbench.py): what `--precision auto` gains on this machine.
.PHONY: stepbench
stepbench: install
	$(PY) -m training.stepbench $(STEPBENCH_ARGS)

# The GPU proof in one command (docs/gpu.md, loadtests/gpu_check.py): export parity gates on the
# provider, `bentoml serve` on it answering every route, readiness, the device micro-benchmark, the
# batching topologies, the FP16 gates; writes runs/gpu-check/gpu-check.{json,md}. DEVICE=cpu runs
# the same steps on the CPU provider (the dry run); GPU_CHECK_ARGS=--quick shortens the measurements.
# A bare GPU machine of this workplace has no BentoML nor ONNX Runtime's GPU build: `make gpu-pack`
# packs them here into .gpu-carry/ and docs/gpu.md gives the calls that carry and run them there.
DEVICE ?= cuda
.PHONY: gpu-check gpu-check-test gpu-pack
gpu-check: export
	$(PY) -m loadtests.gpu_check --device $(DEVICE) $(GPU_CHECK_ARGS)

# The dry run as a test (slow: trains and exports every model into the session's store first).
gpu-check-test: install
	$(PY) -m pytest -q -s -m slow tests/loadtests/test_gpu_check.py

gpu-pack: export
	bash loadtests/gpu_pack.sh

# Known vulnerabilities of the pinned, installed packages (needs PyPI's JSON API or OSV).
audit: install
	test -x .venv-audit/bin/pip-audit || (python3.11 -m venv .venv-audit && .venv-audit/bin/pip install --quiet pip-audit==2.9.0)
	.venv-audit/bin/pip-audit --path $(VENV)/lib/python3.11/site-packages --desc on

# The Bentos: the CPU image's (bentofile.yaml, ONNX Runtime's CPU build) and the GPU image's
# (bentofile-gpu.yaml, onnxruntime-gpu with CUDA 13 and cuDNN 9 from NVIDIA's pip wheels);
# `bentoml containerize ee559:latest` or `ee559-gpu:latest` makes each image.
.PHONY: build-gpu
build: export
	$(VENV)/bin/bentoml build -f bentofile.yaml

build-gpu: export
	$(VENV)/bin/bentoml build -f bentofile-gpu.yaml

clean:
	rm -rf runs
