"""Analytic multiply-accumulate (MAC) and parameter counts, read off the traced program.

Every `conv_general_dilated` and `dot_general` of the jaxpr is counted (out elements x
reduction length), the way papers count MACs (FLOPs = 2 MACs): convolutions, the 1x1
convolutions and linear layers (matmuls), and the linear-attention matmuls. Elementwise
work (norms, activations, the attention's division) is not counted. The resize matmuls of
the segmentation heads are counted separately (`resize`) and left out of the total, as
the papers leave interpolation out. Depthwise convolutions are traced with the `lax`
implementation so that they appear as convolutions whatever the default.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Any

import jax
import jax.extend as jex

from evit_jax.nn.depthwise import depthwise_impl


def _macs_of(eqn: Any) -> tuple[str, int] | None:
    name = eqn.primitive.name
    if name == "conv_general_dilated":
        out = eqn.outvars[0].aval.shape
        rhs = eqn.invars[1].aval.shape
        spec = eqn.params["dimension_numbers"].rhs_spec  # (O, I, spatial...)
        window = math.prod(rhs[d] for d in spec[2:]) * rhs[spec[1]]
        groups = eqn.params["feature_group_count"]
        kind = "depthwise" if groups > 1 and rhs[spec[1]] == 1 else "conv"
        return kind, math.prod(out) * window
    if name == "dot_general":
        (lhs_contract, _), _ = eqn.params["dimension_numbers"]
        lhs = eqn.invars[0].aval.shape
        k = math.prod(lhs[d] for d in lhs_contract)
        return "matmul", math.prod(eqn.outvars[0].aval.shape) * k
    return None


def _walk(jaxpr: Any, counts: Counter) -> None:
    for eqn in jaxpr.eqns:
        hit = _macs_of(eqn)
        if hit is not None:
            kind, macs = hit
            if "resize" in str(eqn.source_info.name_stack):
                kind = "resize"
            counts[kind] += macs
        for sub in jex.core.jaxprs_in_params(eqn.params):
            _walk(sub, counts)


def count_program_macs(fn: Any, *args: Any) -> dict[str, int]:
    """MACs of `fn(*args)` by kind (`conv`, `depthwise`, `matmul`, `resize`) and `total`
    (everything but `resize`). Args may be arrays or `jax.ShapeDtypeStruct`s."""
    with depthwise_impl("lax"):
        # A fresh function object: a cached trace of `fn` may hold another implementation.
        closed = jax.make_jaxpr(lambda *a: fn(*a))(*args)
    counts: Counter = Counter()
    _walk(closed.jaxpr, counts)
    out = {k: int(counts.get(k, 0)) for k in ("conv", "depthwise", "matmul", "resize")}
    out["total"] = out["conv"] + out["depthwise"] + out["matmul"]
    return out


def count_params(variables: Any) -> int:
    """Number of parameters (the `params` collection; BatchNorm statistics not counted)."""
    return int(sum(x.size for x in jax.tree.leaves(variables["params"])))


def count_macs(name: str, resolution: tuple[int, int] | int | None = None,
               part: str | None = None, batch: int = 1) -> int:
    """Analytic MACs of one call of a zoo model (`evit_jax.bench.count_macs("efficientvit-b1",
    224)` -> ~0.52e9), without running it. Resolution defaults to the zoo entry's; `part`
    picks a SAM part (default its encoder)."""
    from evit_jax.bench.programs import make_program
    from evit_jax.zoo import abstract_variables, create_model

    prog = make_program(name, batch, resolution, part=part,
                        variables=abstract_variables(create_model(name)))
    return count_program_macs(prog.fn, prog.variables, *prog.inputs)["total"]
