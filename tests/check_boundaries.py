"""Checks the package boundaries of ARCHITECTURE.md by reading every module's imports.

Each outside dependency has one owner package; ``logger/mbus`` (and ``logger/__init__``) import
nothing outside the standard library that MicroPython lacks, and nothing else from ``logger``.
Run as ``python -m tests.check_boundaries`` (part of ``make lint``) and from the test suite.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# package prefix -> top-level modules it must not import
FORBIDDEN: dict[str, set[str]] = {
    "logger/bus": {"asyncua", "sqlite3", "tpm2_pytss"},
    "logger/modbus": {"asyncua", "sqlite3", "tpm2_pytss"},
    "logger/store": {"serial", "asyncua", "pymodbus"},
    "logger/uplink": {"serial", "pymodbus", "sqlite3"},
    "logger/tpm": {"asyncua", "serial", "sqlite3"},
    "receiver": {"serial", "pymodbus"},
    "provisioning": {"asyncua", "serial"},
}

# outside dependency -> the packages allowed to import it
OWNERS: dict[str, tuple[str, ...]] = {
    "serial": ("logger/bus", "logger/modbus", "hil"),
    "pymodbus": ("logger/modbus", "hil"),
    "tpm2_pytss": ("logger/tpm", "tests", "hil"),
    "asyncua": ("logger/uplink", "receiver", "tests", "hil"),
    "asyncpg": ("receiver", "tests"),
}

# What MicroPython 1.27 offers of the standard library (the codec may use only these).
MICROPYTHON_OK = {"struct", "binascii", "math", "sys", "json", "re", "io"}


def _imports(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
    return found


def check(root: Path = ROOT) -> list[str]:
    problems: list[str] = []
    for path in sorted(root.glob("**/*.py")):
        rel = path.relative_to(root).as_posix()
        if rel.startswith((".venv/", "build/", "tests/node/")) or "/node_modules/" in rel:
            continue
        for lineno, name in _imports(path):
            top = name.split(".")[0]
            where = f"{rel}:{lineno}"
            for prefix, banned in FORBIDDEN.items():
                if rel.startswith(prefix + "/") and top in banned:
                    problems.append(f"{where}: {prefix} must not import {top}")
            owners = OWNERS.get(top)
            if owners and not rel.startswith(tuple(o + "/" for o in owners)):
                problems.append(f"{where}: {top} belongs to {', '.join(owners)}")
            if rel.startswith("logger/mbus/") or rel == "logger/__init__.py":
                if top == "logger":
                    if not name.startswith("logger.mbus"):
                        problems.append(f"{where}: the codec imports {name} from outside it")
                elif top not in MICROPYTHON_OK:
                    problems.append(f"{where}: the codec must stay MicroPython-clean ({name})")
    return problems


def main() -> int:
    problems = check()
    for line in problems:
        print(line, file=sys.stderr)
    if not problems:
        print("package boundaries: ok")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
