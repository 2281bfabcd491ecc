"""Interop with an OPC UA stack we did not write: node-opcua (npm, tests/node/node_modules).

* node-opcua as **server** (its own certificate manager trusting our org CA, with CRLs): the
  logger connects with its TPM key (swtpm) under each of the three policies; a node-opcua
  server whose certificate is not from the organization is refused before the TPM is used.
* node-opcua as **client** against our receiver: accepted with a certificate of the
  organization (it calls GetTrustList and GetConfiguration), refused with an untrusted
  certificate, and refused on a None channel.

The JavaScript is written to a temporary directory and run with ``NODE_PATH`` pointing at the
project's pinned node modules; each script prints one JSON line.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from logger.tpm import open_device_key
from logger.uplink.connection import connect
from logger.uplink.errors import ServerUntrusted
from tests.support.pki import TestPki
from tests.support.receiver_storage import run
from tests.support.requires import require
from tests.support.secure_channel import ReceiverThread, SharedPki, uplink_settings
from tests.support.swtpm import swtpm

ROOT = Path(__file__).resolve().parents[2]
NODE_MODULES = ROOT / "tests" / "node" / "node_modules"


@pytest.fixture(scope="module", autouse=True)
def _node_opcua() -> None:
    """node and node-opcua are what these tests exercise (``make test`` installs both)."""
    require(
        shutil.which("node") is not None and (NODE_MODULES / "node-opcua").is_dir(),
        "node or tests/node/node_modules/node-opcua missing (npm ci in tests/node)",
    )


SERVER_JS = r"""
const o = require("node-opcua");
const [port, cert, key, pki, policy, uri] = process.argv.slice(2);
(async () => {
  const cm = new o.OPCUACertificateManager({ rootFolder: pki,
    automaticallyAcceptUnknownCertificate: false });
  await cm.initialize();
  const server = new o.OPCUAServer({
    port: Number(port), hostname: "127.0.0.1",
    certificateFile: cert, privateKeyFile: key, serverCertificateManager: cm,
    securityPolicies: [o.SecurityPolicy[policy]],
    securityModes: [o.MessageSecurityMode.SignAndEncrypt],
    allowAnonymous: true,
    serverInfo: { applicationUri: uri },
  });
  await server.start();
  console.log(JSON.stringify({ ready: true }));
})().catch((e) => { console.log(JSON.stringify({ error: String(e) })); process.exit(1); });
"""

CLIENT_JS = r"""
const o = require("node-opcua");
const [url, cert, key, pki, mode, uri, ns] = process.argv.slice(2);
(async () => {
  const cm = new o.OPCUACertificateManager({ rootFolder: pki,
    automaticallyAcceptUnknownCertificate: false });
  await cm.initialize();
  const secure = mode === "SignAndEncrypt";
  const client = o.OPCUAClient.create({
    applicationUri: uri, endpointMustExist: false,
    securityMode: secure ? o.MessageSecurityMode.SignAndEncrypt : o.MessageSecurityMode.None,
    securityPolicy: secure ? o.SecurityPolicy.Basic256Sha256 : o.SecurityPolicy.None,
    certificateFile: cert, privateKeyFile: key, clientCertificateManager: cm,
    connectionStrategy: { maxRetry: 0, initialDelay: 100, maxDelay: 200 },
    requestedSessionTimeout: 10000,
  });
  let result = { connected: false };
  try {
    await client.connect(url);
    result.connected = true;
    const session = await client.createSession();
    result.session = true;
    const idx = (await session.readNamespaceArray()).indexOf(ns);
    const obj = (await session.translateBrowsePath(o.makeBrowsePath("ObjectsFolder",
      `/${idx}:MeterDataReceiver`))).targets[0].targetId;
    const meth = (await session.translateBrowsePath(o.makeBrowsePath("ObjectsFolder",
      `/${idx}:MeterDataReceiver.${idx}:GetTrustList`))).targets[0].targetId;
    const r = await session.call({ objectId: obj, methodId: meth, inputArguments: [] });
    result.trust_status = r.statusCode.name;
    result.certificates = r.outputArguments.length ? r.outputArguments[0].value.length : 0;
    const cfg = (await session.translateBrowsePath(o.makeBrowsePath("ObjectsFolder",
      `/${idx}:MeterDataReceiver.${idx}:GetConfiguration`))).targets[0].targetId;
    const c = await session.call({ objectId: obj, methodId: cfg, inputArguments: [
      { dataType: o.DataType.UInt32, value: 0 }] });
    result.config_status = c.statusCode.name;
    await session.close();
  } catch (e) {
    result.error = String(e && e.message ? e.message : e).split("\n")[0];
  }
  try { await client.disconnect(); } catch (e) {}
  console.log(JSON.stringify(result));
})();
"""


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _env() -> dict[str, str]:
    return {**os.environ, "NODE_PATH": str(NODE_MODULES), "NODE_NO_WARNINGS": "1"}


def _der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


def _node_pki(root: Path, pki: TestPki, org: str = "acme") -> Path:
    """node-opcua's certificate-manager folders: our root and org CA trusted, with CRLs."""
    for sub in ("trusted/certs", "trusted/crl", "issuers/certs", "issuers/crl", "rejected"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for name in ("root", org):
        cert = pki.root_cert() if name == "root" else pki.ca_cert(org)
        crl = pki.crl(name).public_bytes(serialization.Encoding.DER)
        for kind in ("trusted", "issuers"):
            (root / kind / "certs" / f"{name}.der").write_bytes(_der(cert))
            (root / kind / "crl" / f"{name}.crl").write_bytes(crl)
    return root


def _plain_key(path: Path, key: rsa.RSAPrivateKey) -> Path:
    """node-opcua reads unencrypted PEM keys: a throw-away copy for the test only."""
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    )
    os.chmod(path, 0o600)
    return path


class NodeServer:
    def __init__(
        self,
        tmp: Path,
        cert: x509.Certificate,
        key: rsa.RSAPrivateKey,
        pki: TestPki,
        policy: str,
        uri: str,
    ) -> None:
        self.port = _free_port()
        script = tmp / "server.js"
        script.write_text(SERVER_JS)
        (tmp / "server-cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        _plain_key(tmp / "server-key.pem", key)
        self.proc = subprocess.Popen(
            [
                "node",
                str(script),
                str(self.port),
                str(tmp / "server-cert.pem"),
                str(tmp / "server-key.pem"),
                str(_node_pki(tmp / "pki", pki)),
                policy,
                uri,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=_env(),
        )
        assert self.proc.stdout is not None
        line = "x"
        while line and not line.startswith("{"):  # node-opcua logs to stdout too
            line = self.proc.stdout.readline()  # blocks until the server says it listens
        if not line or not json.loads(line).get("ready"):
            self.close()
            raise RuntimeError(f"node-opcua server did not start: {line!r}")
        self.url = f"opc.tcp://127.0.0.1:{self.port}"

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture(scope="module")
def spki(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SharedPki]:
    shared = SharedPki(tmp_path_factory.mktemp("interop-pki"))
    yield shared
    shared.close()


@pytest.mark.parametrize(
    ("policy", "name"),
    [
        ("Aes256_Sha256_RsaPss", "Aes256_Sha256_RsaPss"),
        ("Aes128_Sha256_RsaOaep", "Aes128_Sha256_RsaOaep"),
        ("Basic256Sha256", "Basic256Sha256"),
    ],
)
def test_logger_with_tpm_key_connects_to_node_opcua(
    spki: SharedPki, tmp_path: Path, policy: str, name: str
) -> None:
    with swtpm() as tcti:
        device = spki.pki.device("acme", tcti=tcti)
        server = NodeServer(
            tmp_path, spki.rx.cert, spki.rx.key, spki.pki, policy, spki.rx.application_uri
        )
        try:

            async def scenario() -> None:
                with open_device_key(device.state_dir, tcti) as key:
                    started = time.perf_counter()
                    conn = await connect(uplink_settings(server.url, device, spki.rx), key)
                    assert conn.info.policy == name
                    assert 1 <= conn.key_operations <= 4
                    assert conn.is_connected()
                    await conn.close()
                    assert time.perf_counter() - started < 20

            run(scenario())
        finally:
            server.close()


def test_logger_refuses_an_untrusted_node_opcua_server(spki: SharedPki, tmp_path: Path) -> None:
    other = TestPki.create(tmp_path / "other", root_name="Evil Root")
    try:
        rogue = other.receiver("acme", application_uri=spki.rx.application_uri)
        server = NodeServer(
            tmp_path, rogue.cert, rogue.key, other, "Basic256Sha256", spki.rx.application_uri
        )
    finally:
        other.close()
    try:
        with swtpm() as tcti:
            device = spki.pki.device("acme", tcti=tcti)

            async def scenario() -> None:
                with open_device_key(device.state_dir, tcti) as key:
                    with pytest.raises(ServerUntrusted):
                        await connect(uplink_settings(server.url, device, spki.rx), key)
                    assert key.operations == 0

            run(scenario())
    finally:
        server.close()


def _node_client(
    tmp: Path,
    url: str,
    cert: x509.Certificate,
    key: rsa.RSAPrivateKey,
    pki: TestPki,
    mode: str,
    uri: str,
) -> dict[str, object]:
    tmp.mkdir(parents=True, exist_ok=True)
    script = tmp / "client.js"
    script.write_text(CLIENT_JS)
    (tmp / "client-cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    _plain_key(tmp / "client-key.pem", key)
    from logger import contract

    proc = subprocess.run(
        [
            "node",
            str(script),
            url,
            str(tmp / "client-cert.pem"),
            str(tmp / "client-key.pem"),
            str(_node_pki(tmp / "client-pki", pki)),
            mode,
            uri,
            contract.NAMESPACE_URI,
        ],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=60,
        check=False,
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    assert lines, proc.stdout + proc.stderr
    return dict(json.loads(lines[-1]))


def _logger_key(spki: SharedPki) -> rsa.RSAPrivateKey:
    from logger.tpm.filekey import load_key_file
    from tests.support.pki import DEVICE_KEY_PASSPHRASE

    return load_key_file(spki.device.state_dir / "device-key.pem", DEVICE_KEY_PASSPHRASE, "key")


def test_node_opcua_client_against_our_receiver(spki: SharedPki, tmp_path: Path) -> None:
    with ReceiverThread(spki.rx, tmp_path) as rx_thread:
        assert rx_thread.server is not None
        url = rx_thread.server.endpoint_url
        # Accepted with a certificate of the organization: it can call the contract.
        ok = _node_client(
            tmp_path / "ok",
            url,
            spki.device.cert,
            _logger_key(spki),
            spki.pki,
            "SignAndEncrypt",
            spki.device.application_uri,
        )
        assert ok.get("session") is True, ok
        assert ok["trust_status"] == "Good" and ok["certificates"] == 2
        assert ok["config_status"] == "Good"
        # Refused with a certificate the organization never issued.
        other = TestPki.create(tmp_path / "other", root_name="Evil Root")
        try:
            evil_cert, evil_key = other.leaf("acme", "logger")
        finally:
            other.close()
        refused = _node_client(
            tmp_path / "evil",
            url,
            evil_cert,
            evil_key,
            spki.pki,
            "SignAndEncrypt",
            f"urn:acme:logger:{evil_cert.serial_number}",
        )
        assert not refused.get("session"), refused
        # Refused on a None channel, even with a trusted certificate at hand.
        none = _node_client(
            tmp_path / "none",
            url,
            spki.device.cert,
            _logger_key(spki),
            spki.pki,
            "None",
            spki.device.application_uri,
        )
        assert not none.get("session"), none
        entries = rx_thread.run(rx_thread.server.storage.audit_entries())
        events = {e.event for e in entries}
        assert "cert.rejected" in events
