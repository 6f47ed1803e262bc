# Two commands set everything up on a fresh machine: `make demo` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export XLA_PYTHON_CLIENT_PREALLOCATE := false
export TF_CPP_MIN_LOG_LEVEL := 2

.PHONY: venv test test-all lint demo bench clean

venv: $(STAMP)

# Re-runs only when requirements.txt or setup.cfg change.
$(STAMP): requirements.txt setup.cfg
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q -U pip
	$(BIN)/pip install -q -r requirements.txt
	# openpi-client pins numpy<2 but works with numpy 2: install it without its deps (they are in requirements.txt).
	$(BIN)/pip install -q --no-deps openpi-client==0.1.2
	$(BIN)/pip install -q --no-deps --no-build-isolation -e .
	touch $(STAMP)

test: venv
	$(BIN)/python -m pytest -m "not slow" -q tests

test-all: venv
	$(BIN)/python -m pytest -q tests

lint: venv
	$(BIN)/ruff check .

# --resume: a fresh clone runs the whole demo; a second `make demo` reuses what the first finished (all of it, or up
# to where it was interrupted) instead of deleting ~10 min of results. Start over with `make demo DEMO_FLAGS=--overwrite`.
DEMO_FLAGS ?= --resume
demo: venv
	$(BIN)/python -m apt_jax.demo --config experiments/testbed_demo.py --workdir out/demo $(DEMO_FLAGS)

bench: venv
	for f in benchmarks/*.py; do echo "== $$f"; $(BIN)/python $$f || exit 1; done

clean:
	rm -rf $(VENV) build *.egg-info
