"""``mbus-logger``: the field device's command line.

Each sub-command lives in its own module with a ``register(subparsers)`` function. Only the
module of the command being run is imported, so ``decode``, ``scan`` and ``read`` start without
asyncua or tpm2-pytss (technicians run them in loops). Exit codes are those of
:mod:`logger.cli.common`.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# command -> (module, one-line help). The module registers the parser(s) itself.
COMMANDS: dict[str, tuple[str, str]] = {
    "decode": ("logger.cli.decode", "decode M-Bus telegrams (hex text or binary)"),
    "scan": ("logger.cli.bus", "find the meters on an M-Bus line"),
    "read": ("logger.cli.bus", "read meters on an M-Bus line"),
    "run": ("logger.cli.daemon", "run the logger daemon"),
    "check-config": ("logger.cli.daemon", "validate a configuration file"),
    "status": ("logger.cli.daemon", "show the running daemon's state"),
    "buffer": ("logger.cli.daemon", "inspect or export the local buffer"),
    "key": ("logger.cli.keys", "the device key (TPM or encrypted file)"),
    "cert": ("logger.cli.keys", "the device certificate: show, CSR, install"),
    "uplink": ("logger.cli.uplink", "the OPC UA connection to the receiver"),
    "update": ("logger.cli.update", "signed software updates"),
}


def _parser(only: str | None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mbus-logger",
        description="Secure M-Bus/Modbus meter data logger.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    if only is not None:
        importlib.import_module(COMMANDS[only][0]).register(sub)
    for name, (_module, help_text) in COMMANDS.items():
        if name not in sub.choices:
            # A placeholder keeps --help complete without importing the module.
            sub.add_parser(name, help=help_text, add_help=False)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from logger.cli.common import run_handler

    args_list = list(sys.argv[1:] if argv is None else argv)
    command = next((a for a in args_list if not a.startswith("-")), None)
    if command not in COMMANDS:
        command = None
    parser = _parser(command)
    args = parser.parse_args(args_list)
    handler = getattr(args, "handler", None)
    if handler is None:
        parser.print_help(sys.stderr)
        return 2
    return run_handler(handler, args)


if __name__ == "__main__":
    sys.exit(main())
