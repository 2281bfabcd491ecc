"""The pi-gen stage cannot be built here (no Raspberry Pi archive, no arm64 package): check
what can be checked - shell syntax, the stage's shape, the TPM overlay, the package list."""

from __future__ import annotations

import subprocess
from pathlib import Path

STAGE = Path(__file__).resolve().parents[2] / "deploy" / "image" / "stage-mbus"


def test_scripts_are_valid_bash_and_executable():
    scripts = [STAGE / "prerun.sh", *STAGE.glob("*/00-run.sh")]
    assert len(scripts) == 3
    for script in scripts:
        assert script.stat().st_mode & 0o111, script
        subprocess.run(["bash", "-n", str(script)], check=True)


def test_stage_installs_the_package_and_the_tpm_overlay():
    assert (STAGE / "EXPORT_IMAGE").exists()
    packages = (STAGE / "00-packages" / "00-packages").read_text().split()
    assert {"python3", "python3-venv", "libtss2-tctildr0", "libtss2-tcti-device0"} <= set(packages)
    install = (STAGE / "01-mbus-logger" / "00-run.sh").read_text()
    assert "apt-get install" in install and "_arm64.deb" in install
    hardware = (STAGE / "02-hardware" / "00-run.sh").read_text()
    assert "dtoverlay=tpm-slb9670" in hardware and "dtparam=spi=on" in hardware
