# Two commands set everything up on a fresh machine: `make demo` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TPU_STAMP := $(VENV)/.installed-tpu
# The LIBERO simulator lives in its own venv (its pins clash with the JAX stack's numpy); see README, LIBERO.
LIBERO_PY ?= python3.11
LIBERO_VENV := .venv-libero
LIBERO_STAMP := $(LIBERO_VENV)/.installed
export XLA_PYTHON_CLIENT_PREALLOCATE := false
export TF_CPP_MIN_LOG_LEVEL := 2
# CPU runs stay on the CPU even with libtpu installed (it only serves `aot_check --topology` here).
export JAX_PLATFORMS ?= cpu

.PHONY: venv venv-tpu libero test test-all lint demo bench clean

venv: $(STAMP)

# libtpu for TPU topology compiles (a few seconds from a wheel cache; 0.7 GB installed).
venv-tpu: $(TPU_STAMP)

$(TPU_STAMP): $(STAMP) requirements-tpu.txt
	$(BIN)/pip install -q -r requirements-tpu.txt
	touch $(TPU_STAMP)

# Re-runs only when requirements.txt or setup.cfg change.
$(STAMP): requirements.txt setup.cfg
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q -U pip
	$(BIN)/pip install -q -r requirements.txt
	# openpi-client pins numpy<2 but works with numpy 2: install it without its deps (they are in requirements.txt).
	$(BIN)/pip install -q --no-deps openpi-client==0.1.2
	$(BIN)/pip install -q --no-deps --no-build-isolation -e .
	touch $(STAMP)

# Headless rendering needs OSMesa (Debian: libosmesa6); installed here when running as root.
libero: $(LIBERO_STAMP)

$(LIBERO_STAMP): requirements-libero.txt
	@ldconfig -p | grep -q libOSMesa.so || { \
	  if [ "$$(id -u)" = 0 ]; then \
	    apt-get install -y -q libosmesa6 || { apt-get update -q && apt-get install -y -q libosmesa6; }; \
	  else echo "LIBERO renders with OSMesa: run 'sudo apt-get install -y libosmesa6' (or use MUJOCO_GL=egl)"; exit 1; fi; }
	test -x $(LIBERO_VENV)/bin/python || $(LIBERO_PY) -m venv $(LIBERO_VENV)
	$(LIBERO_VENV)/bin/pip install -q -U pip
	$(LIBERO_VENV)/bin/pip install -q -r requirements-libero.txt
	# apt_jax importable from anywhere (the client needs no build step, and no jax).
	echo "$(CURDIR)" > "$$($(LIBERO_VENV)/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/apt_jax_repo.pth"
	touch $(LIBERO_STAMP)

# The suite includes the TPU topology compile tests, so CI installs libtpu.
test: venv-tpu libero
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -m "not slow" -q -n 2 --dist loadfile --durations=15 tests

test-all: venv-tpu libero
	$(BIN)/python -m pytest -q tests

lint: venv
	$(BIN)/ruff check .

# --resume: a fresh clone runs the whole demo; a second `make demo` reuses what the first finished (all of it, or up
# to where it was interrupted) instead of deleting ~10 min of results. Start over with `make demo DEMO_FLAGS=--overwrite`.
DEMO_FLAGS ?= --resume
demo: venv
	$(BIN)/python -m apt_jax.demo --config experiments/testbed_demo.py --workdir out/demo $(DEMO_FLAGS)

bench: venv libero
	for f in benchmarks/*.py; do echo "== $$f"; $(BIN)/python $$f || exit 1; done

clean:
	rm -rf $(VENV) $(LIBERO_VENV) build *.egg-info
