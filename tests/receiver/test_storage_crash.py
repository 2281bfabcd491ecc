"""Killed mid-push: every acknowledged batch is stored, every batch is whole or absent.

A child process pushes batches as fast as it can and prints each acknowledgement the moment
``push`` returns; the test kills it with SIGKILL at a random moment (often inside a
transaction), reopens the storage and checks what survived. This is the receiver's half of
"crashes on either side at any point neither lose nor duplicate a reading".
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path

from receiver.storage import open_storage
from tests.support.receiver_storage import run

BATCH = 2000
ROUNDS = 6

CHILD = textwrap.dedent(
    """
    import asyncio, sys
    from receiver.storage import open_storage
    from tests.support.receiver_storage import batch

    async def main(url, first):
        storage = await open_storage(url)
        k = first
        while True:
            await storage.push("urn:crash", "t", "e1", batch(k * {n}, {n}))
            print(k, flush=True)
            k += 1

    asyncio.run(main(sys.argv[1], int(sys.argv[2])))
    """
).format(n=BATCH)


def _stored_batches(url: str) -> Counter[int]:
    async def scenario() -> Counter[int]:
        storage = await open_storage(url)
        try:
            return Counter([r.sequence // BATCH async for r in storage.export()])
        finally:
            await storage.close()

    return run(scenario())


def test_sigkill_during_pushes_loses_no_acknowledged_batch(storage_url: str) -> None:
    seed = int.from_bytes(os.urandom(4), "big")
    rng = random.Random(seed)
    root = Path(__file__).resolve().parents[2]
    acknowledged: set[int] = set()
    first = 0
    for _round in range(ROUNDS):
        child = subprocess.Popen(
            [sys.executable, "-c", CHILD, storage_url, str(first)],
            stdout=subprocess.PIPE,
            text=True,
            cwd=root,
            env={**os.environ, "PYTHONPATH": str(root)},
        )
        assert child.stdout is not None
        wanted = rng.randint(1, 4)
        for _ in range(wanted):
            line = child.stdout.readline()
            assert line, f"the pushing process died early (exit {child.poll()}, seed {seed})"
            acknowledged.add(int(line))
        # Kill somewhere inside the next push: right away, or after part of its work.
        if rng.random() < 0.7:
            os.kill(child.pid, signal.SIGKILL)
        else:
            line = child.stdout.readline()
            acknowledged.add(int(line))
            os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=30)
        # Acknowledgements printed before the kill but not yet read are acknowledged too.
        acknowledged.update(int(x) for x in child.stdout.read().split())
        child.stdout.close()
        stored = _stored_batches(storage_url)
        lost = acknowledged - set(stored)
        assert not lost, f"acknowledged but lost: {lost} (seed {seed})"
        partial = {k: n for k, n in stored.items() if n != BATCH}
        assert not partial, f"batches stored in part: {partial} (seed {seed})"
        first = max(stored) + 1
