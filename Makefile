# rps: `make train` trains, exports and evaluates the default config; `make test` runs the tests.
# Both create the virtual environment first (`make install`), so each works on a fresh clone.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
CONFIG ?= configs/default.yaml
SHARED_DATA := $(abspath ../shared/data/rps)

.PHONY: install data train test bench tensorboard clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[test]'
	touch $@

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

test: install data
	$(BIN)/python -m pytest

# The benchmark of issue 4: 3 seeds of the default config racing the seed recipe (about 40 min).
bench: install data
	$(BIN)/rps bench --config $(CONFIG) --seeds 3 --docs docs/benchmarks.md

tensorboard: install
	$(BIN)/tensorboard --logdir saved_models --host 127.0.0.1 --port 6006

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
