"""The package version, in a module of its own: modules inside evit_jax read it from here, not
from the package's `__init__` (which imports them: a circle)."""

__version__ = "0.1.0"
