"""evit_jax.malloc: XLA:CPU's per-call buffers stay mapped after `import evit_jax`."""

import os
import subprocess
import sys

import pytest

PROBE = r"""
import resource, sys
import evit_jax, jax, jax.numpy as jnp
from evit_jax.malloc import keep_buffers_mapped
w = jnp.ones((64, 8), jnp.float32)
f = jax.jit(lambda x: jnp.dot(jnp.sin(x), w).sum())  # sin(x): a 32 MiB temporary
x = jnp.ones((131072, 64), jnp.float32)
for _ in range(3):
    jax.block_until_ready(f(x))
faults = []
for _ in range(15):
    r0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    y = f(x); jax.block_until_ready(y); del y
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - r0)
print(keep_buffers_mapped(), sorted(faults)[len(faults) // 2])  # the median call
"""


def _probe(**env: str) -> tuple[bool, int]:
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True,
                         env={**os.environ, **env}, check=True).stdout.split()
    return out[0] == "True", int(out[1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc settings")
def test_buffers_stay_mapped_between_calls():
    """Without the settings every call first-touches its 32 MiB temporary again (~8k
    page faults); with them the typical call reuses the freed block (a call on a thread
    whose heap has none yet still maps one). EVIT_MALLOC=0 turns it off."""
    on, faults_on = _probe()
    off, faults_off = _probe(EVIT_MALLOC="0")
    assert on and not off
    assert faults_off > 4000, faults_off  # 32 MiB / 4 KiB = 8192 pages
    assert faults_on < faults_off / 10, (faults_on, faults_off)
