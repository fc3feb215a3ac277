"""The trainer (`evit-train`, `evit-eval`): `main` / `trainer.train_and_evaluate`, input
pipelines (`input_pipeline`, `datasets/`), optimiser, losses, checkpoints, evaluation. Installed
as `evit_jax.train`; it imports the library, not the other way round (docs/architecture.md)."""
