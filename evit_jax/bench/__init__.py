"""Benchmarks of the zoo models: `evit-bench` (`python -m evit_jax.bench`), side-by-side
comparison with the reference PyTorch code (`evit_jax.bench.compare`), MAC counts.

  from evit_jax.bench import make_program, measure, count_macs
  measure(make_program("efficientvit-b1", batch=8, resolution=224))
  count_macs("efficientvit-l1", 224)   # 5.26e9 (paper: 5.3G)
"""

from evit_jax.bench.macs import count_macs, count_params, count_program_macs
from evit_jax.bench.measure import Result, compile_program, measure, time_calls
from evit_jax.bench.programs import Program, make_program, parts_of

__all__ = ["Program", "Result", "compile_program", "count_macs", "count_params",
           "count_program_macs", "make_program", "measure", "parts_of", "time_calls"]
