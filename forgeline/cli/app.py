"""`forgeline …`: the parser over every registered command, and ``main``.

Library code logs and reports progress; the command modules print, and ``console`` draws the
progress (one line per stage). User mistakes end in `error: <sentence>` and
exit status 1, never a traceback.
"""

from __future__ import annotations

import argparse
import sys
import traceback

from forgeline.runtime.errors import ForgelineError
from forgeline.runtime.storage import is_storage_errno, storage_error

# Every module that registers commands, imported here once so that `forgeline --help` and
# `python -m forgeline.cli --help` list the same commands.
from . import pipeline, tune, generate, bert, bench, train, trust  # noqa: F401, I001  (they register on import, in this order)
from .console import command_console, verbosity
from .registry import COMMANDS
from .signals import handle_stop_signals


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="forgeline",
        description="Export PyTorch Transformers to ONNX, compile them with TVM, and check every stage.",
    )
    parser.add_argument("-v", "--verbose", action="count", default=0,
                        help="show forgeline's logs and other libraries' warnings instead of progress; "
                             "-vv: every library's debug logs")
    parser.add_argument("-q", "--quiet", action="store_true", help="print only the result and errors")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, help_text, configure, run in COMMANDS:
        p = sub.add_parser(name, help=help_text, description=help_text)
        configure(p)
        p.set_defaults(run=run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    handle_stop_signals()  # SIGTERM/SIGHUP: clean up, one line, exit 143/129 (signals.py)
    try:
        with command_console(verbosity(args.quiet, args.verbose)):
            return args.run(args)
    except ForgelineError as exc:
        if args.verbose and exc.__cause__ is not None:
            traceback.print_exception(exc, file=sys.stderr)  # what caused it, for a bug report
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("error: interrupted; nothing was changed.", file=sys.stderr)
        return 130
    except OSError as exc:
        if not is_storage_errno(exc.errno):
            return _internal_error(args, exc)
        print(f"error: {storage_error(exc, f'forgeline {args.command}')}", file=sys.stderr)  # disk full, read-only
        return 1
    except Exception as exc:  # noqa: BLE001 - not a user mistake: a bug, or a library failing
        return _internal_error(args, exc)


def _internal_error(args: argparse.Namespace, exc: Exception) -> int:
    if args.verbose:
        traceback.print_exception(exc, file=sys.stderr)  # the whole chain
    summary = str(exc).strip().splitlines()[-1:] or [""]
    print(f"error: internal error, {type(exc).__name__}: {summary[0][:300]} (run with -v for details).",
          file=sys.stderr)
    return 1
