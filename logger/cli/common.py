"""What every command shares: exit codes, output formats, error reporting.

Exit codes (../docs CLI conventions, one place): 0 ok, 1 check failed, 2 usage or config
error, 3 transient (retry later), 4 authentication or permanent failure.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from logger.config import Config

OK = 0
CHECK_FAILED = 1
USAGE = 2
TRANSIENT = 3
PERMANENT = 4


class CliError(Exception):
    """An error the command reports as one line on stderr with an exit code."""

    def __init__(self, message: str, code: int = USAGE) -> None:
        super().__init__(message)
        self.code = code


def add_format(
    parser: argparse.ArgumentParser,
    choices: tuple[str, ...] = ("text", "json"),
    default: str = "text",
) -> None:
    parser.add_argument(
        "--format", choices=choices, default=default, help=f"output format (default {default})"
    )


def print_json(doc: Any) -> None:
    """Exactly one JSON document on stdout."""
    json.dump(doc, sys.stdout, indent=2, sort_keys=False, default=str)
    sys.stdout.write("\n")


def print_table(rows: list[dict[str, Any]], columns: list[str]) -> None:
    """A plain aligned table; empty cells for missing keys."""
    cells = [[str(r.get(c, "") if r.get(c) is not None else "") for c in columns] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]
    print("  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip())
    for row in cells:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())


def load_config(path: Path) -> Config:
    """The logger's configuration file, or a usage error listing every problem with its line."""
    from logger.config import ConfigError, load

    try:
        return load(path)
    except ConfigError as exc:
        raise CliError(str(exc), USAGE) from exc


def setup_logging(verbose: bool = False) -> None:
    level = (
        logging.DEBUG
        if verbose
        else getattr(logging, os.environ.get("MBUS_LOG_LEVEL", "WARNING").upper(), logging.WARNING)
    )
    logging.basicConfig(
        level=level, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )


def emit(args: argparse.Namespace, doc: Any, text: str | Callable[[], None]) -> None:
    """Print a command's result: ``doc`` as one JSON document under ``--format json``, else
    ``text`` (a line, or a function that prints the human form)."""
    if getattr(args, "format", "text") == "json":
        print_json(doc)
    elif callable(text):
        text()
    else:
        print(text)


def run_handler(
    handler: Callable[[argparse.Namespace], int],
    args: argparse.Namespace,
    prog: str = "mbus-logger",
    exit_code: Callable[[Exception], int | None] | None = None,
) -> int:
    """Run a command; turn our errors into one stderr line ``prog: message`` and an exit code.

    ``exit_code`` maps a program's own exception classes to exit codes (``None``: not ours,
    let it raise with its traceback), so handlers need not wrap every library call.
    """
    setup_logging(getattr(args, "verbose", False))
    try:
        return int(handler(args))
    except CliError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (``export | head``): not an error. Point stdout at /dev/null
        # so that Python's final flush does not complain about the closed pipe at exit.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return OK
    except Exception as exc:
        code = exit_code(exc) if exit_code is not None else None
        if code is None:
            raise
        print(f"{prog}: {exc}", file=sys.stderr)
        return code
