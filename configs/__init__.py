"""Training configs (ml_collections `get_config(arg)` files, big_vision style)."""
