"""The ``hybridllm`` command line: a thin layer that parses, calls the library and prints. Every
failure is one line on stderr and exit code 1 (a usage error: 2; a command stopped by Ctrl-C: 130);
every success exits 0.

Commands live by what they touch: ``data`` (tables: collect, score, stats, split), ``model``
(routers: train, evaluate, crossval, calibrate, route), ``serving`` (serve, chat) and ``steer``
(steer-check: what appended text does to a router's decisions); they register on one Typer app in
that order. The top layer: it may import any other.
"""

from __future__ import annotations

import os
import sys

import typer

from hybridllm.errors import HybridLLMError

from . import data, learn, model, serving, steer  # noqa: F401  (registers the commands, in that order)
from ._common import Interrupted, app, err


def main() -> None:
    """Entry point: run the app, turning known errors into one line and exit code 1 (usage errors:
    2; Ctrl-C: 130, with where the command stopped when it knows)."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        # in this mode typer returns the code of a typer.Exit rather than exiting, and Ctrl-C in a
        # command arrives as Exit(130): the code must become the process's (it once exited 0)
        code = app(standalone_mode=False)
    except Interrupted as exc:
        print(f"interrupted: {exc}", file=sys.stderr)
        sys.exit(130)
    except typer.Abort:  # before RuntimeError, which it derives from
        err.print("aborted")
        sys.exit(130)
    except (HybridLLMError, ValueError, OSError, RuntimeError) as exc:  # ours, bad values, files
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(f"error: {msg}", file=sys.stderr)
        sys.exit(1)
    except Exception as exc:  # usage errors (typer's vendored click) arrive here in non-standalone mode
        code = getattr(exc, "exit_code", None)
        if code is None:
            raise
        message = exc.format_message() if hasattr(exc, "format_message") else ""
        if message:
            print(f"error: {message}".replace("\n", " "), file=sys.stderr)
        sys.exit(code)
    if isinstance(code, int) and code:
        if code == 130:
            print("interrupted", file=sys.stderr)
        sys.exit(code)
