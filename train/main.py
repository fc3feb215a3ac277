"""`python -m train.main --config configs/demo.py --workdir runs/demo` (or `evit-train`).

Multi-host: every host runs the same command; pass `--coordinator_address HOST:PORT
--num_processes N --process_id I`, or nothing on TPU pods / SLURM (auto-detected).
"""

from __future__ import annotations

import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Training config file (`file.py:args`).",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Checkpoints, metrics and plots go here; rerun to resume.")
flags.DEFINE_string("coordinator_address", None, "HOST:PORT of process 0 (multi-host).")
flags.DEFINE_integer("num_processes", None, "Number of processes (multi-host).")
flags.DEFINE_integer("process_id", None, "Index of this process (multi-host).")
flags.mark_flags_as_required(["config", "workdir"])
PREEMPTED_EXIT_CODE = 143  # 128 + SIGTERM: "stopped on request, checkpoint saved"


def _cluster_detected() -> bool:
    env = os.environ
    return (int(env.get("SLURM_NTASKS", "1")) > 1
            or "," in env.get("TPU_WORKER_HOSTNAMES", "")
            or "MEGASCALE_COORDINATOR_ADDRESS" in env)


def init_distributed() -> None:
    """`jax.distributed.initialize` from the flags, or auto-detected on TPU pods / SLURM."""
    import jax
    if FLAGS.coordinator_address or FLAGS.num_processes:
        if None in (FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id):
            raise app.UsageError("--coordinator_address, --num_processes and --process_id go "
                                 "together")
        # CPU collectives across processes need gloo (harmless on TPU / GPU).
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes,
                                   FLAGS.process_id, initialization_timeout=300)
    elif _cluster_detected():
        jax.distributed.initialize()


PROG = "evit-train"
HELP_FLAGS = ("--help", "-?", "--helpshort", "--helpfull")


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if not FLAGS["verbosity"].present:  # orbax / grain log every step of a save at INFO
        logging.set_verbosity(logging.WARNING)
    from evit_jax.cli import EXIT_INTERRUPTED, EXIT_USER_ERROR, USER_ERRORS, one_line

    from .trainer import Preempted, train_and_evaluate
    try:
        init_distributed()
        res = train_and_evaluate(FLAGS.config, FLAGS.workdir)
    except Preempted as e:
        print(e, flush=True)
        sys.exit(PREEMPTED_EXIT_CODE)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        sys.exit(EXIT_INTERRUPTED)
    except USER_ERRORS as e:  # the same one-line report as every evit-* command
        if os.environ.get("EVIT_TRACEBACK"):
            raise
        print(f"{PROG}: error: {one_line(e)}", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)
    import jax
    if jax.process_index() == 0:
        metric = ", ".join(f"{k} {100 * res[k]:.2f}%" for k in ("top1", "top5", "miou")
                           if k in res)
        if "psnr_y" in res:  # SR: dB and SSIM, next to bicubic's
            metric = (f"PSNR-Y {res['psnr_y']:.2f} dB, SSIM-Y {res['ssim_y']:.4f} (bicubic "
                      f"{res['bicubic_psnr_y']:.2f} dB, {res['bicubic_ssim_y']:.4f})")
        print(f"\nDone: step {res['step']} | {metric} | {res['img_per_s']:.1f} img/s "
              f"(training, median)\n  checkpoint: {res['checkpoint']}\n  plot:       "
              f"{res['plot']}\n  metrics:    {os.path.join(FLAGS.workdir, 'metrics.jsonl')}, "
              f"eval_results.json, tb/", flush=True)


def parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing, reported like every evit-* command: a bad flag is one line and
    exit status 2, `--help` exits 0."""
    from evit_jax.cli import EXIT_USAGE, one_line
    try:
        return FLAGS(argv)
    except flags.Error as e:
        print(f"{PROG}: error: {one_line(e)} (see {PROG} --help)", file=sys.stderr)
        sys.exit(EXIT_USAGE)
    except SystemExit:  # absl's help flags exit with status 1
        if any(a in HELP_FLAGS for a in argv[1:]):
            sys.exit(0)
        raise


def run() -> None:
    """Console-script entry point (`evit-train`); exit status 0 ok, 1 user error, 2 bad
    flag, 130 interrupted, 143 stopped on SIGTERM / preemption with a checkpoint saved."""
    # absl's --help lists the flags of the program's main module (sys.argv[0]); under a console
    # script that is the generated wrapper, so name this module's flags as its key flags.
    for name in ("config", "workdir", "coordinator_address", "num_processes", "process_id"):
        FLAGS.register_key_flag_for_module(sys.argv[0], FLAGS[name])
    app.run(main, flags_parser=parse_flags)


if __name__ == "__main__":
    run()
