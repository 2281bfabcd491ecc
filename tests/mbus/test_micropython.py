"""The codec under MicroPython 1.27 (WebAssembly port under node): ``logger/mbus/`` and
``logger/__init__.py`` copied alone onto its filesystem decode every corpus telegram exactly as
CPython does, and refuse the malformed ones with the same error class and offset."""

from __future__ import annotations

import json

import pytest

from logger.mbus import MBusError, decode
from tests.mbus.corpus import all_frames
from tests.support.micropython import codec_files, run_micropython

pytestmark = pytest.mark.micropython

_PROGRAM = """
import json
from logger.mbus import decode, MBusError
for line in open('/lib/frames.txt'):
    name, hexdata = line.split()
    data = bytes.fromhex(hexdata)
    try:
        out = decode(data)
    except MBusError as exc:
        out = {'error_class': type(exc).__name__, 'offset': exc.offset}
    print(name + '\\t' + json.dumps(out))
"""


def _cpython(data: bytes) -> object:
    try:
        return decode(data)
    except MBusError as exc:
        return {"error_class": type(exc).__name__, "offset": exc.offset}


def test_corpus_decodes_identically_under_micropython() -> None:
    frames = all_frames()
    files = codec_files()
    files["frames.txt"] = "".join(
        f"f{i}\t{data.hex()}\n" for i, (_, data) in enumerate(frames)
    ).encode()
    output = run_micropython(_PROGRAM, files)
    lines = output.splitlines()
    assert len(lines) == len(frames)
    for i, line in enumerate(lines):
        name, doc = line.split("\t", 1)
        assert name == f"f{i}"
        want = json.loads(json.dumps(_cpython(frames[i][1])))
        assert json.loads(doc) == want, frames[i][0]


def test_codec_imports_nothing_outside_itself() -> None:
    code = "import sys\nimport logger.mbus, logger.mbus.xml\nprint(sorted(sys.modules))\n"
    modules = run_micropython(code, codec_files())
    for name in ("typing", "enum", "dataclasses"):
        assert f"'{name}'" not in modules
