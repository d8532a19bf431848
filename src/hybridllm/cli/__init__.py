"""The ``hybridllm`` command line: a thin layer that parses, calls the library and prints. Every
failure is one line on stderr and a non-zero exit code; every success exits 0.

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

from . import data, model, serving, steer  # noqa: F401  (registers the commands, in that order)
from ._common import app, err


def main() -> None:
    """Entry point: run the app, turning known errors into one line and exit code 1."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        app(standalone_mode=False)
    except (HybridLLMError, ValueError, OSError, RuntimeError) as exc:  # ours, bad values, files
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(f"error: {msg}", file=sys.stderr)
        sys.exit(1)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        err.print("aborted")
        sys.exit(130)
    except Exception as exc:  # usage errors (typer's vendored click) arrive here in non-standalone mode
        code = getattr(exc, "exit_code", None)
        if code is None:
            raise
        message = exc.format_message() if hasattr(exc, "format_message") else ""
        if message:
            print(f"error: {message}".replace("\n", " "), file=sys.stderr)
        sys.exit(code)
