"""What signed updates cost: sign, verify and apply a real release, against a plain unpack.

The release tree is the one ``make deb`` staged (``build/deb/root/opt/mbus-ua-logger/
releases/<version>``: the device's whole virtualenv, ~2,800 entries, ~60 MB). Side by side in
one run, median of ``--runs``:

* ``sign``: ``mbus-provision update sign`` (hash every file, write the tar, Ed25519);
* ``verify``: ``mbus-logger update verify`` (signature, then every member hashed, no writes);
* ``apply``: ``update apply`` into a fresh root (verify, extract with hashes re-checked, sync,
  flip ``current``);
* ``plain unpack``: ``tarfile.extractall`` of the same bundle plus one sync, no checks at all:
  the floor any installer pays. The ratio apply / plain unpack is the price of verification.

Run: ``make deb`` once, then ``.venv/bin/python -m tests.bench.bench_update [--runs N]``
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from logger.update import Releases, verify_bundle
from tests.support.deploy import make_manufacturer

REPO = Path(__file__).resolve().parents[2]
STAGED = REPO / "build" / "deb" / "root" / "opt" / "mbus-ua-logger" / "releases"


def _medians(fns: list[Callable[[int], None]], runs: int) -> list[float]:
    """Median time of each function, run interleaved, each from a synced (clean) page cache:
    on a shared disk, writeback left by one would otherwise be paid by the next."""
    times: list[list[float]] = [[] for _ in fns]
    for i in range(runs):
        for k, fn in enumerate(fns):
            os.sync()
            start = time.perf_counter()
            fn(i)
            times[k].append(time.perf_counter() - start)
    return [statistics.median(t) for t in times]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--release", type=Path, help="release tree (default: make deb's)")
    args = parser.parse_args(argv)
    release = args.release
    if release is None:
        trees = sorted(STAGED.glob("*")) if STAGED.is_dir() else []
        if not trees:
            print("no staged release: run 'make deb' first (or pass --release DIR)")
            return 2
        release = trees[-1]
    work = Path(tempfile.mkdtemp(prefix="bench-update-"))
    try:
        maker = make_manufacturer(work / "factory")
        public = maker.public_key
        from cryptography.hazmat.primitives.serialization import load_pem_public_key

        key = load_pem_public_key(public.read_bytes())
        bundle = work / "bundle.tar"

        def sign(_i: int) -> None:
            maker.sign(release, bundle, "99.0.0")

        def verify(_i: int) -> None:
            verify_bundle(bundle, key, installed="1.0.0", architecture="all")

        def apply(i: int) -> None:
            root = work / f"apply-{i}"
            verified = verify_bundle(bundle, key, installed="1.0.0")
            Releases(root).install(verified)

        def plain(i: int) -> None:
            dest = work / f"plain-{i}"
            with tarfile.open(bundle) as tf:
                tf.extractall(dest, filter="fully_trusted")
            os.sync()

        (t_sign,) = _medians([sign], args.runs)
        size = bundle.stat().st_size
        with tarfile.open(bundle) as tf:
            members = len(tf.getmembers()) - 2
        t_verify, t_apply, t_plain = _medians([verify, apply, plain], args.runs)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    mb = size / 1e6
    print(f"release: {release} ({members} entries, bundle {mb:.1f} MB), median of {args.runs}")
    print(f"  sign          {t_sign:6.2f} s   {mb / t_sign:6.1f} MB/s")
    print(f"  verify        {t_verify:6.2f} s   {mb / t_verify:6.1f} MB/s")
    print(f"  apply         {t_apply:6.2f} s   {mb / t_apply:6.1f} MB/s")
    print(f"  plain unpack  {t_plain:6.2f} s   {mb / t_plain:6.1f} MB/s")
    print(f"  apply / plain unpack = {t_apply / t_plain:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
