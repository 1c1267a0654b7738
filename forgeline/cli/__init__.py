"""The command-line driver, `forgeline …`: the successor of tvmc for Relax.

``registry`` holds the one list of subcommands; ``pipeline``, ``tune``, ``bench``, ``generate``,
``bert`` and ``train`` register theirs; ``options`` and ``output`` are what they share; ``app``
builds the parser and runs ``main``.
"""

from .app import main

__all__ = ["main"]
