"""The trainer (`evit-train`, `evit-eval`), installed as `evit_jax.train` and imported only by
that name: the loop (`trainer`, `step`, `state`, `checkpoint`), the one input pipeline
(`input_pipeline`), the tasks (`tasks/`: cls, seg, sam, sam_distill, sr) and their data
(`datasets/`), losses, optimizer, evaluation. It imports the library, never the other way
round (docs/architecture.md)."""

if not __name__.startswith("evit_jax.train"):  # e.g. `python -m train.main` in a checkout
    raise ImportError(f"the trainer is imported as evit_jax.train, not {__name__!r}: run "
                      "`evit-train ...` or `python -m evit_jax.train.main ...` (pip install -e . "
                      "installs it)")
