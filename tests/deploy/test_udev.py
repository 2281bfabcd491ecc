"""The udev rules: well-formed (every GOTO has its LABEL, keys are known), and they name what
the unit and the documentation promise. udevadm cannot run them here (no udev daemon, and
Debian 12's udevadm has no 'verify'); the hil install test loads them through dpkg."""

from __future__ import annotations

import re
from pathlib import Path

RULES = Path(__file__).resolve().parents[2] / "deploy" / "udev" / "61-mbus-logger.rules"
KNOWN_KEYS = {
    "ACTION", "KERNEL", "SUBSYSTEM", "SUBSYSTEMS", "ENV", "ATTR", "GROUP", "OWNER", "MODE",
    "SYMLINK", "IMPORT", "GOTO", "LABEL",
}  # fmt: skip


def rules() -> list[list[tuple[str, str, str]]]:
    text = RULES.read_text().replace("\\\n", " ")
    parsed = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        pairs = re.findall(r'([A-Z]+)(?:\{[^}]*\})?\s*(==|!=|\+=|=)\s*"([^"]*)"', line)
        assert pairs, line
        assert len(pairs) == line.count('"') // 2, line  # nothing unparsed between pairs
        parsed.append(pairs)
    return parsed


def test_rules_are_well_formed():
    gotos, labels = set(), set()
    for rule in rules():
        for key, _op, value in rule:
            assert key in KNOWN_KEYS, key
            if key == "GOTO":
                gotos.add(value)
            if key == "LABEL":
                labels.add(value)
    assert gotos and gotos <= labels


def test_rules_give_stable_names_and_tpm_access():
    text = RULES.read_text()
    assert 'SYMLINK+="mbus/usb-$env{ID_SERIAL}' in text
    assert 'SYMLINK+="mbus/path-$env{ID_PATH}"' in text
    assert re.search(r'KERNEL=="tpmrm\[0-9\]\*".*GROUP="tss", MODE="0660"', text)
    assert 'GROUP="dialout", MODE="0660"' in text
