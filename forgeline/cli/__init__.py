"""The command-line driver, `forgeline …`: the successor of tvmc for Relax.

``app`` builds the parser over every registered command and runs ``main`` (the ``forgeline``
entry point: ``forgeline.cli.app:main``). ``registry`` holds the one list of subcommands;
``pipeline``, ``tune``, ``bench``, ``generate``, ``bert``, ``train`` and ``trust`` register
theirs; ``options``, ``files``, ``output`` and ``console`` are what they share.

This file imports nothing: ``app`` imports the command modules through this package, so a
``main`` re-exported here would be an import cycle.
"""
