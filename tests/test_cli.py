"""Every console script: `--help` runs, and each main user error (bad path, wrong model for the
weights, bad image, bad flag value) is one line `PROG: error: ...` on stderr naming the fix,
exit status 1 (2 for a command line argparse / absl refuses), and no traceback."""

from __future__ import annotations

import importlib
import re
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from evit_jax.train.evaluate import build_parser as eval_parser
from evit_jax.train.evaluate import main as eval_main
from PIL import Image

import evit_jax
from evit_jax.bench.cli import main as bench_main
from evit_jax.convert.cli import main as convert_main
from evit_jax.export import main as export_main
from evit_jax.sam.cli import main as segment_main
from evit_jax.sam.cli import read_image

ROOT = Path(__file__).resolve().parents[1]
# [project.scripts] of pyproject.toml (tomllib is Python >= 3.11 only)
SCRIPTS = dict(re.findall(r'^(evit-[\w-]+) = "([\w.:]+)"$',
                          (ROOT / "pyproject.toml").read_text(), re.M))


def _entry(script: str):
    module, func = SCRIPTS[script].split(":")
    return getattr(importlib.import_module(module), func)


def _one_line_error(capsys, status: int, prog: str, *needles: str, code: int = 1) -> None:
    err = capsys.readouterr().err
    assert status == code, err
    lines = err.strip().splitlines()
    assert "Traceback" not in err and len(lines) == 1, err
    assert lines[0].startswith(f"{prog}: error: "), err
    for n in needles:
        assert n in lines[0], err


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """A variables directory of efficientvit-b0 (recorded) and one that records no model."""
    d = tmp_path_factory.mktemp("weights")
    v = evit_jax.init_variables(evit_jax.create_model("efficientvit-b0"))
    return (evit_jax.save_variables(v, d / "b0", model="efficientvit-b0"),
            evit_jax.save_variables(v, d / "anonymous"))


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_help_and_unknown_flag(script, capsys):
    main = _entry(script)
    assert main(["--help"]) == 0
    assert "usage:" in capsys.readouterr().out
    assert main(["--no-such-flag"]) == 2
    assert f"{script}: error: " in capsys.readouterr().err  # argparse's message and usage


def test_evit_train_config_errors_are_one_line(tmp_path, capsys, monkeypatch):
    """evit-train's config flags (issue 25): a bad value, an unknown field, an unknown `:arg`,
    a missing file are one line and exit 2 (a bad command line); an unknown task is a user
    error naming the registered ones (exit 1). Nothing trains."""
    main = _entry("evit-train")
    monkeypatch.chdir(tmp_path)  # `configs/demo.py` is found in the installed package too
    base = ["--config", "configs/demo.py", "--workdir", str(tmp_path / "wd")]
    _one_line_error(capsys, main([*base, "--config.lr=fast"]), "evit-train",
                    "flag --config.lr=fast: could not convert string to float: 'fast'",
                    "(see evit-train --help)", code=2)
    _one_line_error(capsys, main([*base, "--config.nosuchfield=1"]), "evit-train",
                    "configs/demo.py has no field 'nosuchfield'", "configs/common.py", code=2)
    _one_line_error(capsys, main([*base, "--config.eval_every_step", "5"]), "evit-train",
                    "did you mean --config.eval_every_steps", code=2)
    _one_line_error(capsys, main([*base, "--config.data.nosuch=1"]), "evit-train",
                    "no field 'data.nosuch'", code=2)
    status = main(["--config", "configs/demo.py:bogus=1", "--workdir", str(tmp_path / "wd")])
    _one_line_error(capsys, status, "evit-train", "unknown config argument 'bogus'",
                    "known: ['runlocal', 'size', 'steps', 'tiny']", code=2)
    _one_line_error(capsys, main(["--config", "configs/nope.py", "--workdir", "w"]),
                    "evit-train", "config file 'configs/nope.py' not found", code=2)
    _one_line_error(capsys, main([*base, "--config.task=det"]), "evit-train",
                    "unknown task 'det'", "registered tasks: cls, sam, sam_distill, seg, sr")
    assert not (tmp_path / "wd").exists()


def test_evit_train_overrides_parse_like_ml_collections(tmp_path, monkeypatch):
    """`--config.f=v`, `--config.f v`, tuples, `--noconfig.flag`, nested fields, and the
    `:args` of the file; the config is locked and imported under one name."""
    from evit_jax.train.main import build_parser
    monkeypatch.chdir(tmp_path)
    ns = build_parser().parse_args([
        "--config", "configs/demo.py:steps=9,tiny", "--workdir", "w", "--config.lr", "0.5",
        "--config.input.train_sizes=(32, 64)", "--noconfig.progress_bar",
        "--config.data.num_workers=0", "--coordinator-address", "h:1"])
    c = ns.config
    assert (c.lr, c.total_steps, c.data.name, c.data.num_workers) == \
        (0.5, 9, "evit_shapes/tiny", 0)
    assert c.input.train_sizes == (32, 64) and c.progress_bar is False
    assert ns.coordinator_address == "h:1" and ns.workdir == "w"
    with pytest.raises(AttributeError):
        c.new_field = 1  # locked: a typo in code is an error too
    mine = tmp_path / "mine.py"  # a config of one's own, loaded from its path
    mine.write_text("from evit_jax.configs import demo\n\n"
                    "def get_config(arg=None):\n    c = demo.get_config(arg)\n"
                    "    c.lr = 0.25\n    return c\n")
    assert build_parser().parse_args(["--config", f"{mine}:tiny", "--workdir", "w"]
                                     ).config.lr == 0.25


def test_evit_convert(weights, tmp_path, capsys):
    b0, _ = weights
    src = ["--src", str(b0 / "variables.safetensors")]
    status = convert_main(["--model", "efficientvit-b9", *src, "--dst", str(tmp_path / "d")])
    _one_line_error(capsys, status, "evit-convert", "unknown model 'efficientvit-b9'",
                    "did you mean")
    status = convert_main(["--model", "efficientvit-b0", "--src", str(tmp_path / "no.pt"),
                           "--dst", str(tmp_path / "d")])
    _one_line_error(capsys, status, "evit-convert", "no.pt: no such checkpoint file")
    (tmp_path / "empty").write_bytes(b"")
    status = convert_main(["--model", "efficientvit-b0", *src, "--dst", str(tmp_path / "empty")])
    _one_line_error(capsys, status, "evit-convert", "is a file, not a directory",
                    "choose a new --dst")
    status = convert_main(["--model", "efficientvit-b0", "--src", str(tmp_path / "empty"),
                           "--dst", str(tmp_path / "d")])
    _one_line_error(capsys, status, "evit-convert", "empty")
    assert not (tmp_path / "d").exists()


def _png_bomb(path: Path, side: int = 100_000) -> None:
    """A 60-byte PNG whose header claims side x side pixels (10 gigapixels)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(
            ">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b""))


def test_evit_segment(weights, tmp_path, capsys):
    b0, _ = weights
    img = tmp_path / "in.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(img)
    base = ["--point", "2,2", "--out", str(tmp_path / "out.png")]

    def seg(*args, weights=b0, image=img):
        return segment_main(["--model", "efficientvit-sam-l0", "--weights", str(weights),
                             "--image", str(image), *base, *args])

    _one_line_error(capsys, seg(weights=tmp_path / "nope"), "evit-segment",
                    "nope: no such file or directory", "evit-convert")
    _one_line_error(capsys, seg(), "evit-segment", "holds weights of 'efficientvit-b0', not "
                    "'efficientvit-sam-l0'", "--model efficientvit-b0")
    (tmp_path / "text.png").write_text("not a picture")
    _one_line_error(capsys, seg(image=tmp_path / "text.png"), "evit-segment",
                    "not an image file PIL can read")
    _png_bomb(tmp_path / "bomb.png")
    _one_line_error(capsys, seg(image=tmp_path / "bomb.png"), "evit-segment",
                    "too many pixels to decode safely", "downscale")
    _one_line_error(capsys, seg("--point", "1,x"), "evit-segment",
                    "expected 2 or 3 comma-separated numbers")
    assert not (tmp_path / "out.png").exists()


def test_16_bit_images_are_scaled_not_clipped(tmp_path):
    grey16 = (np.arange(64, dtype=np.uint16).reshape(4, 16) * 1040)  # 0 .. 65520
    Image.fromarray(grey16).save(tmp_path / "g16.png")
    rgb = read_image(tmp_path / "g16.png")
    assert rgb.dtype == np.uint8 and rgb.shape == (4, 16, 3)
    np.testing.assert_array_equal(rgb[..., 0], np.round(grey16 / 257).astype(np.uint8))
    assert 0 < rgb.mean() < 255 and (rgb[..., 0] == rgb[..., 2]).all()


def test_evit_eval(weights, tmp_path, capsys):
    b0, _ = weights
    data = ["--data", "evit_shapes"]
    _one_line_error(capsys, eval_main(["--weights", str(tmp_path / "nope"), *data]), "evit-eval",
                    "no such file or directory")
    _one_line_error(capsys, eval_main(["--weights", str(b0), "--model", "efficientvit-b1",
                                       *data]), "evit-eval",
                    "holds weights of 'efficientvit-b0', not 'efficientvit-b1'")
    _one_line_error(capsys, eval_main(["--weights", str(b0), "--model", "b1", *data]),
                    "evit-eval", "unknown model 'b1'")
    _one_line_error(capsys, eval_main(["--weights", str(b0), "--batch-size", "0", *data]),
                    "evit-eval", "--batch-size must be positive")
    assert eval_main(["--weights", str(b0), "--batch-size", "x", *data]) == 2
    # The old underscore spellings still parse (hidden), into the same fields.
    args = eval_parser().parse_args(["--weights", "w", *data, "--data_dir", "/d",
                                     "--batch_size", "8", "--num_workers", "0"])
    assert (args.data_dir, args.batch_size, args.num_workers) == ("/d", 8, 0)
    assert "--data_dir" not in eval_parser().format_help()


def test_evit_export(weights, tmp_path, capsys):
    b0, anonymous = weights
    out = ["--out", str(tmp_path / "m.jaxexport")]
    _one_line_error(capsys, export_main(["--model", "efficientvit-b0", "--weights",
                                         str(tmp_path / "nope"), *out]), "evit-export",
                    "no such file or directory")
    _one_line_error(capsys, export_main(["--model", "efficientvit-b1", "--weights", str(b0),
                                         *out]), "evit-export",
                    "holds weights of 'efficientvit-b0', not 'efficientvit-b1'")
    _one_line_error(capsys, export_main(["--model", "efficientvit-b1", "--weights",
                                         str(anonymous), *out]), "evit-export",
                    "records no model name and its weights do not fit efficientvit-b1")
    _one_line_error(capsys, export_main(["--model", "efficientvit-b0", "--weights", str(b0),
                                         "--batch", "0", *out]), "evit-export",
                    "--batch must be at least 1")
    assert export_main(["--model", "efficientvit-b0", "--weights", str(b0),
                        "--resolution", "big", *out]) == 2
    assert not (tmp_path / "m.jaxexport").exists()


def test_evit_bench(capsys):
    _one_line_error(capsys, bench_main(["--model", "efficientvit-b9"]), "evit-bench",
                    "unknown model 'efficientvit-b9'")
    _one_line_error(capsys, bench_main(["--model", "nothing*"]), "evit-bench",
                    "no zoo model matches 'nothing*'")
    _one_line_error(capsys, bench_main(["--batch", "0"]), "evit-bench",
                    "--batch and --iters must be at least 1")
    assert bench_main(["--resolution", "big"]) == 2
    assert "resolution must look like 224 or 512x1024" in capsys.readouterr().err


# ------------------------------------------------------------------------------ the runner
def _runner(fail):
    """`run` over a parser with no flags and a main that calls `fail()`."""
    import argparse

    from evit_jax.cli import run
    return run("evit-x", argparse.ArgumentParser(prog="evit-x"), lambda args: fail(), [])


def test_runner_reports_user_errors_as_one_line(tmp_path, capsys, monkeypatch):
    from evit_jax.errors import UserError, UserFileNotFoundError, UserPathError, user_path

    def user():
        raise UserError("bad value\n  on two lines: fix it")
    _one_line_error(capsys, _runner(user), "evit-x", "bad value on two lines: fix it")

    def missing():
        with user_path(tmp_path / "in.png"):
            open(tmp_path / "in.png", "rb")
    _one_line_error(capsys, _runner(missing), "evit-x",
                    f"cannot read {tmp_path / 'in.png'}: No such file or directory")
    with pytest.raises(FileNotFoundError) as e:  # library callers still catch the OS kind
        missing()
    assert isinstance(e.value, UserFileNotFoundError) and isinstance(e.value, UserPathError)
    assert isinstance(e.value, ValueError) and e.value.__cause__.errno == 2

    def interrupted():
        raise KeyboardInterrupt
    assert _runner(interrupted) == 130
    assert capsys.readouterr().err == "evit-x: interrupted\n"

    monkeypatch.setenv("EVIT_TRACEBACK", "1")  # user errors with their traceback, on request
    with pytest.raises(UserError, match="bad value"):
        _runner(user)


@pytest.mark.parametrize("bug", [ValueError("shape (3,) vs (4,)"), KeyError("params"),
                                 TypeError("unsupported operand"),
                                 OSError(5, "Input/output error")])
def test_runner_keeps_the_traceback_of_a_bug(bug, capsys):
    """Only the project's UserError becomes one line: a ValueError, KeyError, TypeError or
    OSError that escapes a command is a bug (or a failure outside the user's input) and keeps
    its traceback."""
    def fail():
        raise bug
    with pytest.raises(type(bug)) as e:
        _runner(fail)
    assert e.value is bug and capsys.readouterr().err == ""


def test_a_bug_in_a_command_keeps_its_traceback(weights, tmp_path):
    """The installed command: exit status 1 with Python's traceback, not `prog: error:`."""
    import subprocess
    import sys
    b0, _ = weights
    code = ("import sys, evit_jax.convert.cli as c\n"
            "def bug(*a, **k): raise ValueError('an internal shape bug')\n"
            "c.convert_state_dict = bug\n"
            "sys.exit(c.main(sys.argv[1:]))\n")
    r = subprocess.run([sys.executable, "-c", code, "--model", "efficientvit-b0", "--src",
                        str(b0 / "variables.safetensors"), "--dst", str(tmp_path / "d")],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 1, r.stderr
    assert "Traceback (most recent call last)" in r.stderr, r.stderr
    assert r.stderr.rstrip().endswith("ValueError: an internal shape bug"), r.stderr
    assert "evit-convert: error" not in r.stderr and not (tmp_path / "d").exists()


def test_errors_module_is_stdlib_only():
    """Every layer (nn, models, the zoo) imports evit_jax.errors: it may import nothing
    but the standard library."""
    import ast
    import sys

    tree = ast.parse((ROOT / "evit_jax" / "errors.py").read_text())
    names = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    names |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert {n.split(".")[0] for n in names} <= set(sys.stdlib_module_names), names


def test_paths_and_values_across_commands(weights, tmp_path, capsys):
    """One case per kind of user input not covered above: a missing image, an output that
    cannot be written, a corrupt variables file, an unknown part, a resolution the model
    cannot take."""
    b0, _ = weights
    img = tmp_path / "in.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(img)
    seg = ["--model", "efficientvit-sam-l0", "--weights", str(b0), "--point", "2,2"]
    _one_line_error(capsys, segment_main([*seg, "--image", str(tmp_path / "none.png"),
                                          "--out", str(tmp_path / "o.png")]),
                    "evit-segment", "none.png: no such image file")
    from evit_jax.sr.cli import main as sr_main
    _one_line_error(capsys, sr_main(["--model", "efficientvit-sr-x2", "--weights", str(b0),
                                     "--image", str(tmp_path), "--out",
                                     str(tmp_path / "o.png")]),
                    "evit-sr", f"cannot read {tmp_path}: Is a directory")
    (tmp_path / "file").write_text("")
    _one_line_error(capsys, bench_main(["--model", "efficientvit-b0", "--iters", "1",
                                        "--warmup", "0", "--resolution", "32",
                                        "--no-progress", "--json",
                                        str(tmp_path / "file" / "rows.json")]),
                    "evit-bench", f"cannot write {tmp_path / 'file' / 'rows.json'}")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_text("{not json")
    out = ["--out", str(tmp_path / "m.jaxexport")]
    _one_line_error(capsys, export_main(["--model", "efficientvit-b0", "--weights", str(bad),
                                         *out]), "evit-export", "config.json: corrupt",
                    "convert the checkpoint again")
    _one_line_error(capsys, export_main(["--model", "efficientvit-b0", "--weights", str(b0),
                                         "--part", "decoder", *out]), "evit-export",
                    "has parts ('model',), not 'decoder'")
    _one_line_error(capsys, export_main(["--model", "efficientvit-b0", "--weights", str(b0),
                                         "--resolution", "100", *out]), "evit-export",
                    "must be a multiple of 32")
    assert not (tmp_path / "m.jaxexport").exists()


def test_a_missing_training_package_is_one_line_naming_the_extra(capsys, monkeypatch):
    """A package of the [train] extra that is not installed: `require` and the runner name
    `pip install 'evit-jax[train]'`; any other missing module keeps its traceback."""
    import sys

    from evit_jax.errors import MissingDependencyError, UserError, require

    monkeypatch.setitem(sys.modules, "grain", None)  # `import grain` fails as if absent
    with pytest.raises(MissingDependencyError) as e:
        require("grain")
    assert isinstance(e.value, ImportError) and isinstance(e.value, UserError)
    assert str(e.value) == ("grain is not installed; it comes with evit-jax's [train] extra: "
                            "pip install 'evit-jax[train]'")
    assert require("orbax.checkpoint").__name__ == "orbax.checkpoint"

    def lazy_import():
        import grain  # noqa: F401
    _one_line_error(capsys, _runner(lazy_import), "evit-x", "grain is not installed",
                    "pip install 'evit-jax[train]'")

    def typo():
        import evit_jax.no_such_module  # noqa: F401
    with pytest.raises(ModuleNotFoundError):
        _runner(typo)
