# The two commands of the README: `make demo` and `make test`. Both bootstrap everything and are idempotent.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed-stamp
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
export DVC_NO_ANALYTICS := 1
export RAY_USAGE_STATS_ENABLED := 0
export RAY_CHDIR_TO_TRIAL_DIR := 0
export MLFLOW_DISABLE_TELEMETRY := true
export HF_HUB_OFFLINE := 1
export PYTHONUNBUFFERED := 1

.PHONY: demo pretrained study test test-fast lint venv system-deps lock ui clean-outputs help

demo: venv system-deps  ## run the whole DVC pipeline on params.yaml (default: Fashion-MNIST, CPU)
	dvc repro

# The authors' released weights through the pretrained DAG (pretrained/dvc.yaml; README "The paper's released
# models"). PROFILE=imagenet256-official-{B,L,H} rewrites pretrained/params.yaml first (hand edits are lost);
# without it the file runs as is. The preflight validates it and checks its files before DVC deletes any output.
pretrained: venv  ## import, sample and evaluate the released SphereAR weights (PROFILE=imagenet256-official-B|L|H)
	$(if $(PROFILE),python -m sphereard.profiles apply $(PROFILE) --out pretrained/params.yaml &&) \
	python -m sphereard.convert preflight --params pretrained/params.yaml && dvc repro pretrained/dvc.yaml

# The multi-seed study (study/dvc.yaml, derived from dvc.yaml; study/params.yaml = the `study` profile):
# every tokenizer and generator per seed of `seeds`, the CFG sweep over w in {1, 2, 3, 4.5, 6, 8}, verdicts.
study: venv system-deps  ## the multi-seed study: study/reports/report.md (README "The multi-seed study")
	dvc repro study/dvc.yaml

test: venv system-deps  ## the whole test suite (slow end-to-end tests use the smoke profile)
	python -m pytest -q

test-fast: venv system-deps  ## the test suite without the slow end-to-end tests
	python -m pytest -q -m "not slow"

lint: venv  ## ruff check (rules in pyproject.toml)
	ruff check .

venv: $(STAMP)  ## create .venv with exactly requirements.lock, plus this package (editable)

$(STAMP): requirements.lock pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install -q -r requirements.lock
	$(VENV)/bin/python -m pip install -q --no-deps --no-build-isolation -e .
	touch $(STAMP)

system-deps:  ## the Debian packages of the embedded datasets (installs them as root, else says what to install)
	@scripts/system-deps.sh

lock:  ## re-resolve requirements.in into the pinned requirements.lock
	$(PYTHON) -m venv /tmp/sphereard-lock-venv
	/tmp/sphereard-lock-venv/bin/python -m pip install -q -r requirements.in
	/tmp/sphereard-lock-venv/bin/python -m pip freeze --exclude-editable > requirements.lock

ui: venv  ## MLflow UI on the repo's store (or $MLFLOW_TRACKING_URI), bound to 127.0.0.1; prints the runs-table URL
	uri=$$(python -m sphereard.tracking --base http://127.0.0.1:5000) && \
	mlflow ui --host 127.0.0.1 --port 5000 --backend-store-uri "$$uri" --default-artifact-root $(CURDIR)/mlartifacts

# Only what the pipeline regenerates, read from params.yaml (`python -m sphereard.layout outputs`): every
# stage block's `out` (checkpoints, exports, latent cache, samples, metrics plots, sweep) and the Ray Train
# storage. Kept: data.out (the prepared source data), metrics/ and reports/ (git-tracked), the DVC cache
# and run cache (.dvc/cache: `dvc checkout` or `dvc repro` restores cached outputs from it), and the
# MLflow store (mlflow.db, mlartifacts/).
clean-outputs: venv  ## delete the stage outputs params.yaml names (keeps the prepared data, metrics/, reports/, the DVC cache, MLflow runs)
	set -o pipefail; python -m sphereard.layout outputs | xargs -0 -r rm -rf --

help:  ## list the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  %-14s %s\n", $$1, $$2}' $(MAKEFILE_LIST)
