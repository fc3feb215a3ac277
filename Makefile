# Two entry points (see README): `make demo` runs the main job, `make test` the test suite.
# Each creates the project virtualenv (.venv) on first use and installs what it needs.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# The tests write real PyTorch checkpoints, so they need torch; the CPU build is enough.
# (Never a runtime dependency of evit_jax.)
TORCH ?= torch==2.13.0
PYTEST_ARGS ?=

.PHONY: setup demo test lint clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -U pip
	# tflite: TensorFlow CPU + LiteRT for tests/test_tflite.py (+32 s, +1.3 GB; docs/deploy.md)
	$(PY) -m pip install -q -e '.[train,dev,sam-eval,onnx,tflite,app,app-test]' '$(TORCH)'
	# jax2onnx declares an older orbax than ours but runs without it (docs/deploy.md)
	$(PY) -m pip install -q --no-deps 'jax2onnx==0.17.1'
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(PY) -m evit_jax.train.main --config configs/demo.py --workdir runs/demo

test: $(STAMP)
	$(PY) -m pytest -q $(PYTEST_ARGS)

lint: $(STAMP)
	$(PY) -m ruff check .

clean:
	rm -rf $(VENV) runs .pytest_cache

# --- speed (docs/speed.md) ---------------------------------------------------------------
REF ?= /tmp/evit-ref

.PHONY: native bench compare-targets

native: $(STAMP)  ## (re)build the C++ XLA:CPU kernels now (pip install -e . or the first use does it too)
	$(PY) -m evit_jax.build_native

bench: $(STAMP)  ## latency, throughput, MACs, memory of the speed-target models
	$(PY) -m evit_jax.bench --model efficientvit-b1 --batch 1 8 --resolution 224

compare-targets: $(STAMP)  ## the speed table: evit-jax vs the reference PyTorch (setup.sh in REF)
	$(PY) -m evit_jax.bench.compare --ref $(REF) --targets --markdown
