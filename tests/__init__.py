"""The test suite (pytest); shared helpers are in `tests/helpers.py`."""
