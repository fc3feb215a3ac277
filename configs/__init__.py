"""Training configs (ml_collections `get_config(arg)` files, big_vision style), installed as
`evit_jax.configs` and imported only by that name."""

if not __name__.startswith("evit_jax.configs"):
    raise ImportError(f"the configs are imported as evit_jax.configs, not {__name__!r}; "
                      "--config configs/demo.py finds them by path")
