"""``mbus-logger uplink check``: can this logger reach its receiver securely, right now?

Connects exactly as the daemon does (GetEndpoints, the strongest acceptable SignAndEncrypt
policy, full server-certificate validation before the device key is used, session with the
device key) and prints what was negotiated. Exit codes (CLI.md): 0 connected; 4 when either
side refuses (server untrusted, our certificate rejected or revoked, no acceptable policy,
stale CRLs), within 40 s; 3 when the network is down or the server does not answer; 2 for a
configuration problem (no state dir, bad endpoint URL).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from logger.cli.common import (
    OK,
    PERMANENT,
    TRANSIENT,
    USAGE,
    CliError,
    add_format,
    load_config,
    print_json,
)

CHECK_DEADLINE_S = 38.0  # CLI.md promises an answer within 40 s


def _settings(args: argparse.Namespace) -> Any:
    from logger.uplink.connection import UplinkSettings

    if args.config:
        config = load_config(args.config)
        if config.uplink is None:
            raise CliError(f"{args.config} has no [uplink] section", USAGE)
        return UplinkSettings(
            endpoint=config.uplink.endpoint,
            state_dir=Path(config.paths.state_dir),
            tcti=args.tpm or config.uplink.tcti,
            server_uri=args.server_uri or config.uplink.server_application_uri,
            connect_timeout_s=min(config.uplink.connect_timeout_s, CHECK_DEADLINE_S - 3),
        )
    if not args.state_dir or not args.endpoint:
        raise CliError("give --config FILE, or --state-dir D and --endpoint URL", USAGE)
    return UplinkSettings(
        endpoint=args.endpoint,
        state_dir=Path(args.state_dir),
        tcti=args.tpm,
        server_uri=args.server_uri,
        connect_timeout_s=30.0,
    )


async def _check(settings: Any) -> dict[str, Any]:
    import asyncio

    from logger.tpm import DeviceKeyError, StateDirError, open_device_key
    from logger.uplink.connection import connect
    from logger.uplink.errors import LocalSetupError, UplinkTimeout

    try:
        key = await asyncio.to_thread(
            open_device_key, settings.state_dir, settings.tcti, settings.secret_file
        )
    except StateDirError as exc:
        raise LocalSetupError(str(exc)) from exc
    except DeviceKeyError as exc:
        raise CliError(f"device key: {exc}", TRANSIENT if exc.transient else PERMANENT) from exc
    try:
        try:
            connection = await asyncio.wait_for(connect(settings, key), CHECK_DEADLINE_S)
        except TimeoutError as exc:
            raise UplinkTimeout(f"no answer within {CHECK_DEADLINE_S:.0f} s") from exc
        try:
            doc: dict[str, Any] = {"connected": True, "endpoint": settings.endpoint}
            doc.update(connection.info.as_dict())
            doc["key"] = key.kind
            doc["key_operations"] = connection.key_operations
            doc["connect_ms"] = round(connection.seconds * 1000, 1)
            doc["channel_lifetime_ms"] = connection.client.channel_lifetime_ms
            doc["trust_recovery"] = connection.recovery
        finally:
            await connection.close()
    finally:
        await asyncio.to_thread(key.close)
    return doc


def _uplink_check(args: argparse.Namespace) -> int:
    import asyncio

    from logger.uplink.errors import LocalSetupError, UplinkError

    if not getattr(args, "verbose", False):
        os.environ.setdefault("TSS2_LOG", "all+NONE")
    settings = _settings(args)
    try:
        doc = asyncio.run(_check(settings))
    except LocalSetupError as exc:
        raise CliError(str(exc), USAGE) from exc
    except UplinkError as exc:
        if args.format == "json":
            print_json(
                {
                    "connected": False,
                    "endpoint": settings.endpoint,
                    "error": exc.kind,
                    "reason": getattr(exc, "reason", None) or exc.detail or None,
                    "message": str(exc),
                }
            )
        raise CliError(f"{exc.kind}: {exc}", PERMANENT if exc.permanent else TRANSIENT) from exc
    if args.format == "json":
        print_json(doc)
    else:
        rows = [
            ("endpoint", doc["endpoint"]),
            ("policy", f"{doc['policy']} (SignAndEncrypt)"),
            ("server", doc["subject"]),
            ("application uri", doc["application_uri"]),
            ("issuer", doc["issuer"]),
            ("thumbprint", doc["thumbprint"]),
            ("valid", f"{doc['not_before']} .. {doc['not_after']}"),
            ("device key", f"{doc['key']}, {doc['key_operations']} operations"),
            ("connect time", f"{doc['connect_ms']} ms"),
        ]
        if doc["trust_recovery"]:
            rows.append(("trust", "CRLs stale: only the trust list may be fetched"))
        width = max(len(k) for k, _ in rows)
        for name, value in rows:
            print(f"{name.ljust(width)}  {value}")
    return OK


def register(subparsers: Any) -> None:
    uplink = subparsers.add_parser("uplink", help="the OPC UA connection to the receiver")
    sub = uplink.add_subparsers(dest="uplink_command", metavar="SUBCOMMAND")
    sub.required = True
    p = sub.add_parser(
        "check", help="connect once; print the policy and the server certificate (exit 0/3/4)"
    )
    p.add_argument("--config", metavar="FILE", help="logger configuration (its [uplink])")
    p.add_argument("--state-dir", metavar="D", help="device state dir (without --config)")
    p.add_argument("--endpoint", metavar="URL", help="opc.tcp://host:port (without --config)")
    p.add_argument("--tpm", metavar="TCTI", help="default device:/dev/tpmrm0")
    p.add_argument("--server-uri", metavar="URI", help="expected ApplicationUri of the server")
    add_format(p)
    p.set_defaults(handler=_uplink_check)
