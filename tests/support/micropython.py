"""Run Python code under MicroPython 1.27 (the WebAssembly port, under node).

``run_micropython(code, files)`` writes ``files`` (path -> bytes, relative to ``/lib``) into
MicroPython's virtual filesystem, puts ``/lib`` first on ``sys.path``, runs ``code`` and returns
what it printed. A Python exception inside MicroPython raises :class:`MicroPythonError` with
its traceback. When node or the npm package is missing the test is skipped with the reason,
except in CI (``CI`` set), where ``make test`` installs both and their absence fails the test.

``codec_files()`` gives the files a device needs for the M-Bus codec: ``logger/__init__.py``
and the whole ``logger/mbus/`` package, exactly as in the source tree.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from tests.support.requires import missing, require

ROOT = Path(__file__).resolve().parents[2]
NODE_DIR = ROOT / "tests" / "node"
PACKAGE = NODE_DIR / "node_modules" / "@micropython" / "micropython-webassembly-pyscript"

_RUNNER = r"""
import { readFileSync } from "node:fs";
import { pathToFileURL } from "node:url";

const [, , modulePath, manifestPath] = process.argv;
const { loadMicroPython } = await import(pathToFileURL(modulePath).href);
const manifest = JSON.parse(readFileSync(manifestPath, "utf8"));
let out = "";
let err = "";
const mp = await loadMicroPython({
  stdout: (line) => { out += line + "\n"; },
  stderr: (line) => { err += line + "\n"; },
  linebuffer: true,
  heapsize: manifest.heapsize,
});
for (const f of manifest.files) {
  const target = "/lib/" + f.path;
  mp.FS.mkdirTree(target.substring(0, target.lastIndexOf("/")));
  mp.FS.writeFile(target, readFileSync(f.source));
}
const code = "import sys\nsys.path.insert(0, '/lib')\n" + readFileSync(manifest.code, "utf8");
try {
  mp.runPython(code);
} catch (e) {
  process.stdout.write(out);
  process.stderr.write(err + String(e && e.message ? e.message : e) + "\n");
  process.exit(1);
}
process.stdout.write(out);
if (err) { process.stderr.write(err); }
"""


class MicroPythonError(RuntimeError):
    """The code raised inside MicroPython; the message holds its stderr/traceback."""


def _require() -> str:
    node = shutil.which("node")
    if node is None:
        missing("node is not installed (make test installs it)")
    require(
        (PACKAGE / "micropython.mjs").exists(),
        f"npm package missing: {PACKAGE} (make test runs npm ci in tests/node)",
    )
    return node


def codec_files() -> dict[str, bytes]:
    """``logger/__init__.py`` and every module of ``logger/mbus/``, keyed by relative path."""
    files = {"logger/__init__.py": (ROOT / "logger" / "__init__.py").read_bytes()}
    for path in sorted((ROOT / "logger" / "mbus").glob("*.py")):
        files["logger/mbus/" + path.name] = path.read_bytes()
    return files


def run_micropython(
    code: str,
    files: dict[str, bytes] | None = None,
    *,
    timeout: float = 120.0,
    heapsize: int = 64 * 1024 * 1024,
) -> str:
    """Run ``code`` in MicroPython with ``files`` under ``/lib``; return its stdout."""
    node = _require()
    with tempfile.TemporaryDirectory(prefix="mpy-") as tmp:
        tmpdir = Path(tmp)
        entries = []
        for i, (rel, data) in enumerate(sorted((files or {}).items())):
            if rel.startswith("/") or ".." in rel.split("/"):
                raise ValueError(f"file path must be relative inside /lib: {rel!r}")
            source = tmpdir / f"f{i}"
            source.write_bytes(data)
            entries.append({"path": rel, "source": str(source)})
        (tmpdir / "code.py").write_text(code, encoding="utf-8")
        manifest = {"files": entries, "code": str(tmpdir / "code.py"), "heapsize": heapsize}
        (tmpdir / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
        (tmpdir / "runner.mjs").write_text(_RUNNER, encoding="utf-8")
        proc = subprocess.run(
            [
                node,
                str(tmpdir / "runner.mjs"),
                str(PACKAGE / "micropython.mjs"),
                str(tmpdir / "manifest.json"),
            ],
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=tmpdir,
            env={**os.environ, "NODE_NO_WARNINGS": "1"},
            check=False,
        )
    if proc.returncode != 0:
        raise MicroPythonError(
            f"MicroPython failed (exit {proc.returncode}):\n{proc.stderr.strip()}"
        )
    return proc.stdout
