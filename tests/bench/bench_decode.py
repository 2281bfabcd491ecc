"""Decode throughput: ``logger.mbus.decode`` against pyMeterBus 0.8.5, side by side in one run.

Both decode the same telegrams fully (ours: ``decode(frame)``, a JSON-ready dict; pyMeterBus:
``meterbus.load(frame).interpreted``, its dict with interpreted values), over the corpus frames
that both accept. Each frame is used in 16 variants with different access numbers (checksum
repaired) so that no layer can serve a cached result. Rounds alternate between the two
decoders; the figures are the median frames per second over the rounds, and the ratio.

Run: ``.venv/bin/python -m tests.bench.bench_decode [--rounds N]``
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings
from collections.abc import Callable

from logger.mbus import MBusError, decode
from logger.mbus.frames import encode_long
from logger.mbus.xml import telegram_xml
from tests.mbus.corpus import all_frames

VARIANTS = 16


def _pymeterbus() -> Callable[[bytes], object]:
    import meterbus

    def full(frame: bytes) -> object:
        return meterbus.load(frame).interpreted

    return full


def workload() -> list[bytes]:
    """Corpus RSP_UD frames with a long header that both decoders accept, in variants."""
    other = _pymeterbus()
    frames = []
    for _, data in all_frames():
        if len(data) < 21 or data[0] != 0x68 or data[6] not in (0x72, 0x76):
            continue
        try:
            decode(data)
        except MBusError:
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                other(data)
        except Exception:  # pyMeterBus raises many kinds; we only keep what it decodes
            continue
        user = bytearray(data[7:-2])
        for access in range(VARIANTS):
            user[8] = (user[8] + 1 + access * 37) & 0xFF  # access number of the long header
            frames.append(encode_long(data[4], data[5], data[6], bytes(user)))
    return frames


def _rate(fn: Callable[[bytes], object], frames: list[bytes]) -> float:
    start = time.perf_counter()
    for frame in frames:
        fn(frame)
    return len(frames) / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args(argv)
    frames = workload()
    xml_frames = [f for f in frames if f[6] == 0x72 and f[4] in (0x08, 0x18, 0x28, 0x38)]
    other = _pymeterbus()
    ours_rates: list[float] = []
    theirs_rates: list[float] = []
    xml_rates: list[float] = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _rate(decode, frames)  # warm-up
        _rate(other, frames)
        for _ in range(args.rounds):
            ours_rates.append(_rate(decode, frames))
            theirs_rates.append(_rate(other, frames))
            xml_rates.append(_rate(lambda f: telegram_xml(f, normalized=True), xml_frames))
    ours = statistics.median(ours_rates)
    theirs = statistics.median(theirs_rates)
    xml = statistics.median(xml_rates)
    print(
        f"frames: {len(frames)} ({len(frames) // VARIANTS} corpus telegrams x {VARIANTS} "
        f"access numbers), rounds: {args.rounds}"
    )
    print(f"logger.mbus.decode            {ours:10.0f} frames/s (median)")
    print(f"pyMeterBus 0.8.5 load+interpreted {theirs:6.0f} frames/s (median)")
    print(f"ratio                         {ours / theirs:10.1f}x  (target >= 4x)")
    print(f"libmbus XML (normalised)      {xml:10.0f} frames/s (median, for reference)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
