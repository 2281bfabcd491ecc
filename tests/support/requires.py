"""Prerequisites of a test: skip on a developer machine, fail in CI.

``make test`` installs every tool the suite drives (swtpm, node and the npm packages under
``tests/node``, systemd-analyze, dpkg-deb, ...) and CI runs it as root. A test that skips
there because one of them is missing could never fail, so a regression in the setup would go
unnoticed. CI sets ``CI`` (``CI=true``); with it, a missing prerequisite is a failure naming
what is missing. Without it (a workstation that lacks, say, root) the test is skipped with
the same reason.
"""

from __future__ import annotations

import os
from typing import NoReturn

import pytest


def in_ci() -> bool:
    """Whether the suite runs in CI, where every prerequisite must be present."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def missing(reason: str) -> NoReturn:
    """Stop the current test (or fixture) because a prerequisite is absent: fail in CI."""
    if in_ci():
        pytest.fail(f"prerequisite missing in CI: {reason}", pytrace=False)
    pytest.skip(reason)


def require(present: bool, reason: str) -> None:
    """Call :func:`missing` with REASON unless PRESENT.

    Called from the test or fixture (or an autouse fixture for a whole module), never as a
    ``skipif`` mark: a mark cannot fail, and the condition is then checked when the test
    runs rather than when it is collected.
    """
    if not present:
        missing(reason)
