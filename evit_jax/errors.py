"""The errors that are the user's to fix (stdlib only, so every layer may import this module:
`nn`, `models`, the zoo, the library, the apps, the trainer).

A placeholder of the hygiene branch's module of the same name (which adds the path errors and
`require`): the same class, so the branches merge by taking that file.
"""

from __future__ import annotations


class UserError(ValueError):
    """Input that evit-jax cannot use (bad path, wrong model, malformed file, bad value).

    The message says what is wrong and how to fix it, in one line where possible; the CLIs
    print it without a traceback.
    """
