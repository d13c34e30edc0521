# rps: `make train` trains, exports and evaluates the default config; `make test` runs the tests.
# Both create the virtual environment first (`make install`), so each works on a fresh clone.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
CONFIG ?= configs/default.yaml
SHARED_DATA := $(abspath ../shared/data/rps)

.PHONY: install install-backends lock data train test bench bench-backends ablations cv stress tune tensorboard docs docker-build docker-train clean

install: $(VENV)/.installed

# Exact versions from requirements.lock (Python 3.11, Linux x86_64), then the package itself.
# pip byte-compiles the 18,000 .py files one by one (94 s on a 2-core AMD EPYC, 2026-12-08);
# compileall on every core takes 43 s. The .pyc files matter: where PYTHONDONTWRITEBYTECODE is
# set (as on CI machines), Python never writes them itself, and `import tensorflow` then takes
# 16-20 s instead of 7 s in every process. Like pip, compileall skips the few files that are not
# valid on this Python (torch's tests for Python 3.12 syntax), so its exit status is not used.
PIP_INSTALL = $(BIN)/python -m pip install --quiet --disable-pip-version-check --no-compile
COMPILE = $(BIN)/python -m compileall -q -j 0 $(VENV)/lib > /dev/null || true
$(VENV)/.installed: pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(PIP_INSTALL) -r requirements.lock
	$(PIP_INSTALL) --no-deps -e .
	$(COMPILE)
	touch $@

# The Keras 3 backends JAX and PyTorch (CPU builds) for `KERAS_BACKEND=jax|torch`; the tests
# train on each (docs/distributed.md). Pinned in requirements-backends.lock, with
# requirements.lock as constraints so that the shared dependencies keep their versions.
install-backends: $(VENV)/.backends

$(VENV)/.backends: $(VENV)/.installed requirements-backends.lock
	$(PIP_INSTALL) -c requirements.lock -r requirements-backends.lock
	$(COMPILE)
	touch $@

# Re-pin requirements.lock after a change to pyproject.toml's dependencies. pip-compile resolves
# as pip installs (uv ignores upper bounds of Requires-Python), from plain PyPI: this machine's
# pip.conf (local indexes, constraints) and PIP_FIND_LINKS are left out. Run it on Python 3.11.
LOCK_VENV ?= .venv-lock
lock:
	$(PYTHON) -m venv $(LOCK_VENV)
	$(LOCK_VENV)/bin/python -m pip install --quiet --disable-pip-version-check 'pip-tools>=7.4,<8'
	env -u PIP_FIND_LINKS PIP_CONFIG_FILE=/dev/null CUSTOM_COMPILE_COMMAND="make lock" \
		$(LOCK_VENV)/bin/pip-compile --quiet --extra test --strip-extras --allow-unsafe \
		--index-url https://pypi.org/simple --no-emit-index-url --newline lf \
		--output-file requirements.lock pyproject.toml

# docs/configuration.md is generated from rps/config.py (tests/test_config_docs.py checks it).
docs: install
	$(BIN)/python -m rps.config_docs docs/configuration.md

# Docker (docs/quickstart.md): CPU or GPU image (DEVICE=gpu), training with the data and
# saved_models/ mounted from here, so every run folder outlives the container.
DEVICE ?= cpu
IMAGE ?= rps:$(DEVICE)
DOCKER_RUN_ARGS := --rm --user $$(id -u):$$(id -g) -e HOME=/tmp $(if $(filter gpu,$(DEVICE)),--gpus all)
docker-build:
	docker build -f docker/Dockerfile.$(DEVICE) -t $(IMAGE) .

docker-train: data
	mkdir -p saved_models
	docker run $(DOCKER_RUN_ARGS) \
		-v "$$(realpath data/rps)":/app/data/rps:ro \
		-v "$(CURDIR)/saved_models":/app/saved_models \
		$(IMAGE) rps train --config $(CONFIG)

# data/rps: a link to ../shared/data/rps when it exists, else the official download (TFDS URLs,
# checksums verified).
data: data/rps/train

data/rps/train:
	@mkdir -p data
	@if [ -d "$(SHARED_DATA)/train" ]; then \
		ln -sfn "$(SHARED_DATA)" data/rps && echo "data/rps -> $(SHARED_DATA)"; \
	else \
		$(MAKE) install && $(BIN)/rps download --to data/rps --source zips; \
	fi

train: install data
	$(BIN)/rps train --config $(CONFIG)

# On every core (pytest-xdist, at most 4 workers); --dist loadgroup keeps the tests that share
# the session's smoke run (xdist_group "smoke_run") on one worker. PYTEST_ARGS adds options.
PYTEST_ARGS ?=
test: install install-backends data
	$(BIN)/python -m pytest -n auto --maxprocesses 4 --dist loadgroup $(PYTEST_ARGS)

# The benchmark of issue 4: 3 seeds of the default config racing the seed recipe (about 40 min).
bench: install data
	$(BIN)/rps bench --config $(CONFIG) --seeds 3 --docs docs/benchmarks.md

# Epoch time of the default config on each Keras backend, one process each (about 5 minutes).
bench-backends: install install-backends data
	$(BIN)/rps bench --config $(CONFIG) --backends tensorflow,jax,torch --docs docs/benchmarks.md

# Decide config changes without test/: 7-fold cross-validation over the 21 hands of train/
# (docs/experiments.md), one full training per fold (7-10 minutes a fold for the default on a
# 2-core Intel Xeon, as its speed varies by the hour: 50-70 minutes in all; about 20 minutes a
# fold on a 2-core AMD EPYC); config overrides in OVERRIDES; results in saved_models/cv-<name>/:
# cv.json (decide on this), images.json (every held-out image's probabilities), test.json.
CV_NAME ?= default
cv: install data
	$(BIN)/python scripts/cross_validation.py --config $(CONFIG) --folds 7 \
		--out saved_models/cv-$(CV_NAME) $(OVERRIDES)

# Crash safety (docs/reliability.md): 10 smoke runs SIGKILLed at random moments (seeded), each
# rerun with the same command; reports how many end complete and valid (about 10 minutes).
KILLS ?= 10
stress: install data
	$(BIN)/python scripts/stress_resume.py --kills $(KILLS) --data-root data/rps --docs docs/reliability.md

# keras-tuner search (configs/tune.yaml: Hyperband on the default config, about 20 minutes);
# `make tune RESUME=1` continues an interrupted search. Writes saved_models/tune-<name>/.
TUNE ?= configs/tune.yaml
tune: install data
	$(BIN)/rps tune --config $(TUNE) $(if $(RESUME),--resume)

# Every run (and tuning trial) under saved_models/, on this machine only.
# What each choice buys: speed probes, then one full training per accuracy ablation (about 1 h).
ablations: install data
	$(BIN)/rps bench --config $(CONFIG) --ablations all --docs docs/benchmarks.md

tensorboard: install
	$(BIN)/tensorboard --logdir saved_models --host 127.0.0.1 --port 6006

clean:
	rm -rf $(VENV) $(LOCK_VENV) build *.egg-info .pytest_cache
