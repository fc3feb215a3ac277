"""Float32 parity with the reference PyTorch EfficientViT (the project's yardstick).

For every zoo model with a fixture in ../shared/parity (18 authors' classification and
segmentation models, 7 timm models): rebuild the reference's synthetic state dict, convert
it twice, in memory (`convert_state_dict`) and as a user would (a checkpoint file written with
torch: the authors' `{"state_dict": ...}` `.pt`, timm's `.safetensors`, through the
`evit-convert` CLI and `load_variables`), run the Flax model on the stored input with both and
compare with the stored reference output. The reference's own float32 noise is ~1e-6; the bar
is 1e-5.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import evit_jax
from evit_jax.convert import convert_state_dict
from evit_jax.convert.cli import main as convert_cli
from tests.helpers import has_fixture, needs_shared, rel_l2, synth_case

pytestmark = needs_shared  # every test runs a fixture
TOL = 1e-5
NAMES = [n for n in evit_jax.list_models() if has_fixture(n)
         and evit_jax.model_info(n).task in ("cls", "seg")]


def test_every_fixture_is_covered():
    assert len(NAMES) == 25, NAMES


def _reference_output(golden) -> np.ndarray:
    if "logits" in golden:
        return golden["logits"]
    return golden["segout"].transpose(0, 2, 3, 1)  # NCHW -> NHWC


def _write_checkpoint(name: str, sd: dict[str, np.ndarray], folder) -> str:
    """The state dict as the file a user downloads: the authors' `.pt` or timm's safetensors."""
    torch = pytest.importorskip("torch")
    tensors = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in sd.items()}
    if name.startswith("efficientvit_"):
        from safetensors.torch import save_file

        path = folder / "model.safetensors"
        save_file(tensors, str(path))
    else:
        path = folder / "checkpoint.pt"
        torch.save({"state_dict": tensors}, path)
    return str(path)


@pytest.mark.parametrize("name", NAMES)
def test_parity(name, tmp_path):
    sd, golden = synth_case(name)
    wrapped = sd if name.startswith("efficientvit_") else {"state_dict": sd}
    in_memory = convert_state_dict(name, wrapped)
    src, dst = _write_checkpoint(name, sd, tmp_path), tmp_path / "converted"
    assert convert_cli(["--model", name, "--src", src, "--dst", str(dst)]) == 0
    from_file = evit_jax.load_variables(dst)

    model = evit_jax.create_model(name)
    apply = jax.jit(model.apply)
    x = jnp.asarray(golden["input"].astype(np.float32).transpose(0, 2, 3, 1))
    ref = _reference_output(golden)
    for how, variables in (("convert_state_dict", in_memory), ("evit-convert file", from_file)):
        err = rel_l2(apply(variables, x), ref)
        print(f"{name} via {how}: rel-L2 {err:.2e}")
        assert err <= TOL, f"{name} via {how}: rel-L2 {err:.3e} > {TOL}"
