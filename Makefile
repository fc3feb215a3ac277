# Developer shortcuts. `pip install -e .` already builds the native kernels when it can.
PY ?= python
REF ?= /tmp/evit-ref

.PHONY: native test bench compare-targets

native:  ## (re)build the C++ XLA:CPU kernels in place
	$(PY) -m evit_jax.build_native

test:
	$(PY) -m pytest -q

bench:  ## latency/throughput of the speed-target models
	$(PY) -m evit_jax.bench --model efficientvit-b1 --batch 1 8 --resolution 224

compare-targets:  ## the README speed table: evit-jax vs the reference PyTorch, side by side
	$(PY) -m evit_jax.bench.compare --ref $(REF) --targets --markdown
