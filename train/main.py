"""`evit-train --config configs/demo.py --workdir runs/demo` (or `python -m evit_jax.train.main`).

`--config FILE.py[:ARGS]` and any number of `--config.FIELD=VALUE` overrides
(`train.config_loader`). Multi-host: every host runs the same command; pass
`--coordinator-address HOST:PORT --num-processes N --process-id I`, or nothing on TPU pods /
SLURM (auto-detected). Exit status (`evit_jax.cli.run`): 0 done, 1 a user error (one line),
2 a bad command line or config (one line), 130 interrupted, 143 stopped on SIGTERM /
preemption after saving a checkpoint (rerun the same command to resume).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import Any

from evit_jax.cli import EXIT_USAGE, UserError, one_line, run

PROG = "evit-train"
PREEMPTED_EXIT_CODE = 143  # 128 + SIGTERM: "stopped on request, checkpoint saved"


class _Parser(argparse.ArgumentParser):
    """argparse for the named flags; `--config.*` overrides go to the config loader, and a
    config that cannot be built is a one-line usage error (exit 2)."""

    def parse_args(self, args: Sequence[str] | None = None, namespace: Any = None) -> Any:
        from . import config_loader
        ns, rest = self.parse_known_args(args, namespace)
        overrides, i = [], 0
        while i < len(rest):  # `--config.a=v`, `--config.a v`, `--noconfig.flag`
            if not config_loader.OVERRIDE.match(rest[i]):
                self.error(f"unrecognized arguments: {' '.join(rest[i:])}")
            takes_value = "=" not in rest[i] and not rest[i].lstrip("-").startswith("no")
            nxt = rest[i + 1] if i + 1 < len(rest) else None
            step = 2 if takes_value and nxt is not None and not nxt.startswith("--") else 1
            overrides += rest[i:i + step]
            i += step
        try:
            ns.config = config_loader.load(ns.config, overrides)
        except UserError as e:
            print(f"{PROG}: error: {one_line(e)} (see {PROG} --help)", file=sys.stderr)
            sys.exit(EXIT_USAGE)
        return ns


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog=PROG, description="Train (or resume) a model of the zoo; every task, "
                "one loop (docs/training.md).",
                epilog="Override any config field with --config.FIELD=VALUE, e.g. "
                "--config.lr=1e-3 --config.data.num_workers=0.")
    p.add_argument("--config", required=True, metavar="FILE.py[:ARGS]",
                   help="training config, e.g. configs/demo.py or "
                   "configs/cls_imagenet.py:model=efficientvit-b2")
    p.add_argument("--workdir", required=True,
                   help="checkpoints, metrics and plots go here; rerun to resume")
    p.add_argument("--coordinator-address", metavar="HOST:PORT",
                   help="address of process 0 (multi-host)")
    p.add_argument("--num-processes", type=int, help="number of processes (multi-host)")
    p.add_argument("--process-id", type=int, help="index of this process (multi-host)")
    p.add_argument("--verbosity", type=int, default=None,
                   help="absl log level of orbax / grain (default: warnings only; 0: info)")
    return p


def _cluster_detected() -> bool:
    env = os.environ
    return (int(env.get("SLURM_NTASKS", "1")) > 1
            or "," in env.get("TPU_WORKER_HOSTNAMES", "")
            or "MEGASCALE_COORDINATOR_ADDRESS" in env)


def init_distributed(args: argparse.Namespace) -> None:
    """`jax.distributed.initialize` from the flags, or auto-detected on TPU pods / SLURM."""
    import jax
    given = (args.coordinator_address, args.num_processes, args.process_id)
    if any(v is not None for v in given):
        if None in given:
            raise UserError("--coordinator-address, --num-processes and --process-id go "
                            "together")
        # CPU collectives across processes need gloo (harmless on TPU / GPU).
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(*given, initialization_timeout=300)
    elif _cluster_detected():
        jax.distributed.initialize()


def _train(args: argparse.Namespace) -> int:
    from absl import flags, logging
    # absl flags are not parsed outside absl.app (orbax and grain read theirs); orbax / grain
    # log every step of a save at INFO.
    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()
    logging.set_verbosity(logging.WARNING if args.verbosity is None else args.verbosity)
    import jax

    from .tasks import get_task
    from .trainer import Preempted, train_and_evaluate
    init_distributed(args)
    try:
        res = train_and_evaluate(args.config, args.workdir)
    except Preempted as e:
        print(e, flush=True)
        return PREEMPTED_EXIT_CODE
    if jax.process_index() == 0:
        print(f"\nDone: step {res['step']} | {get_task(args.config.task).summary(res)} | "
              f"{res['img_per_s']:.1f} img/s (training, median)\n  checkpoint: "
              f"{res['checkpoint']}\n  plot:       {res['plot']}\n  metrics:    "
              f"{os.path.join(args.workdir, 'metrics.jsonl')}, eval_results.json, tb/",
              flush=True)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Console-script entry point (`evit-train`); returns the exit status (module doc)."""
    return run(PROG, build_parser(), _train, argv)


if __name__ == "__main__":
    raise SystemExit(main())
