"""Device-key cost: TPM key creation, sign and decrypt on swtpm, with and without a PCR policy,
side by side with the encrypted-file key, in one run.

What an OPC UA connection asks of the key (SECURITY.md): PKCS#1 v1.5 SHA-256 and PSS SHA-256
signatures, OAEP SHA-1 / SHA-256 decryption. Each operation is timed ``--ops`` times per
variant; the figures are medians in milliseconds, and the ratios are PCR-policy key vs. plain
TPM key (what binding to PCRs costs per operation) and TPM key vs. file key. swtpm is a
software TPM on loopback: a discrete TPM is 10-100x slower per RSA operation, the policy
overhead (three extra commands) stays the same in count.

Run: ``.venv/bin/python -m tests.bench.bench_tpm [--ops N] [--keys N]``
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from logger.tpm import DeviceState, Identity, KeyRef, open_device_key
from logger.tpm.filekey import write_key_file, write_private_bytes
from logger.tpm.tpm import PcrSelection, Tpm
from tests.support.swtpm import swtpm

PKCS1 = padding.PKCS1v15()
PSS = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32)
OAEP1 = padding.OAEP(mgf=padding.MGF1(hashes.SHA1()), algorithm=hashes.SHA1(), label=None)
OAEP256 = padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None)


def _median_ms(fn: Callable[[], object], n: int) -> float:
    samples = []
    for _ in range(n):
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1000)
    return statistics.median(samples)


def _ops(key: rsa.RSAPrivateKey, n: int) -> dict[str, float]:
    public = key.public_key()
    c1 = public.encrypt(b"n" * 32, OAEP1)
    c256 = public.encrypt(b"n" * 32, OAEP256)
    return {
        "sign pkcs1 sha256": _median_ms(lambda: key.sign(b"x" * 1024, PKCS1, hashes.SHA256()), n),
        "sign pss sha256": _median_ms(lambda: key.sign(b"x" * 1024, PSS, hashes.SHA256()), n),
        "decrypt oaep sha1": _median_ms(lambda: key.decrypt(c1, OAEP1), n),
        "decrypt oaep sha256": _median_ms(lambda: key.decrypt(c256, OAEP256), n),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ops", type=int, default=50, help="operations per figure")
    parser.add_argument("--keys", type=int, default=5, help="key creations to time")
    args = parser.parse_args()
    os.environ.setdefault("TSS2_LOG", "all+NONE")
    work = Path(tempfile.mkdtemp(prefix="bench-tpm-"))
    with swtpm() as tcti:
        with Tpm(tcti) as tpm:
            start = time.perf_counter()
            tpm.ensure_primary()
            srk_ms = (time.perf_counter() - start) * 1000
            create = []
            for i in range(args.keys):
                start = time.perf_counter()
                tpm.create_key(0x81000010 + i)
                create.append((time.perf_counter() - start) * 1000)
            tpm.create_key(0x81000002)
            tpm.create_key(0x81000003, pcrs=PcrSelection.parse("sha256:0,7"))
            for i in range(args.keys):
                tpm.evict(0x81000010 + i)
        results: dict[str, dict[str, float]] = {}
        for name, ref in (
            ("tpm", KeyRef("tpm", handle=0x81000002)),
            ("tpm+pcr", KeyRef("tpm", handle=0x81000003, pcrs="sha256:0,7")),
        ):
            state = DeviceState.create(work / name)
            state.save_identity(Identity("BENCH", "urn:bench", ref))
            with open_device_key(state.root, tcti) as key:
                results[name] = _ops(key.private_key, args.ops)
        state = DeviceState.create(work / "file")
        write_key_file(
            state.root / "device-key.pem",
            rsa.generate_private_key(public_exponent=65537, key_size=2048),
            b"pw",
        )
        write_private_bytes(state.root / "device-key.secret", b"pw")
        state.save_identity(Identity("BENCH", "urn:bench", KeyRef("file", path="device-key.pem")))
        start = time.perf_counter()
        with open_device_key(state.root) as key:
            open_file_ms = (time.perf_counter() - start) * 1000
            results["file"] = _ops(key.private_key, args.ops)

    print(f"swtpm on loopback, {args.ops} operations per figure, medians in ms")
    print(f"storage primary key (create + persist, once per TPM): {srk_ms:8.1f} ms")
    print(
        f"device key RSA-2048 (create + load + persist):       "
        f"{statistics.median(create):8.1f} ms  (median of {args.keys})"
    )
    print(f"opening the encrypted key file (PBKDF2 + decrypt):   {open_file_ms:8.1f} ms")
    print()
    print(f"{'operation':22} {'tpm':>8} {'tpm+pcr':>8} {'file':>8} {'pcr/tpm':>8} {'tpm/file':>9}")
    for op in results["tpm"]:
        t, p, f = results["tpm"][op], results["tpm+pcr"][op], results["file"][op]
        print(f"{op:22} {t:8.2f} {p:8.2f} {f:8.2f} {p / t:8.2f} {t / f:9.1f}")
    per_connection = (
        results["tpm"]["sign pkcs1 sha256"] * 2 + results["tpm"]["decrypt oaep sha1"] * 2
    )
    per_connection_pcr = (
        results["tpm+pcr"]["sign pkcs1 sha256"] * 2 + results["tpm+pcr"]["decrypt oaep sha1"] * 2
    )
    print()
    print(
        f"per OPC UA connection (2 signs + 2 decrypts, Basic256Sha256): "
        f"tpm {per_connection:.1f} ms, tpm+pcr {per_connection_pcr:.1f} ms"
    )


if __name__ == "__main__":
    main()
