"""The one list of subcommands: each command module registers into it with ``@command``."""

from __future__ import annotations

import argparse
from collections.abc import Callable

Configure = Callable[[argparse.ArgumentParser], None]
Run = Callable[[argparse.Namespace], int]

COMMANDS: list[tuple[str, str, Configure, Run]] = []


def command(name: str, help_text: str, configure: Configure):
    """Register a subcommand: its name, its help line, a function adding its arguments."""

    def register(run: Run):
        COMMANDS.append((name, help_text, configure, run))
        return run

    return register
