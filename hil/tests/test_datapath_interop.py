"""A stack we did not write pushes readings: node-opcua (npm) as a logger against our receiver.

The client knows nothing but the namespace URI: it browses to ``PushReadings``, reads the
method's declared InputArguments (name, built-in type, array or scalar) and builds its call
from them, pushes three readings, resends them (duplicates, nothing stored twice), sends a
batch with a repeated sequence number (``BadSequenceNumberInvalid``), and reads the newest
exact value back from the ``Loggers/<uri>/Meters/<meter>/<record>`` variable.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from logger import contract
from tests.support.datapath import datapath_receiver
from tests.support.receiver_storage import run
from tests.support.requires import require
from tests.support.secure_channel import SharedPki

ROOT = Path(__file__).resolve().parents[2]
NODE_MODULES = ROOT / "tests" / "node" / "node_modules"

pytestmark = pytest.mark.hil


@pytest.fixture(scope="module", autouse=True)
def _node_opcua() -> None:
    """node and node-opcua are what these tests exercise (``make test`` installs both)."""
    require(
        shutil.which("node") is not None and (NODE_MODULES / "node-opcua").is_dir(),
        "node or tests/node/node_modules/node-opcua missing (npm ci in tests/node)",
    )


PUSH_JS = r"""
const o = require("node-opcua");
const [url, cert, key, pki, uri, ns] = process.argv.slice(2);
const NULL_TIME = new Date(Date.UTC(1601, 0, 1));
(async () => {
  const cm = new o.OPCUACertificateManager({ rootFolder: pki,
    automaticallyAcceptUnknownCertificate: false });
  await cm.initialize();
  const client = o.OPCUAClient.create({
    applicationUri: uri, endpointMustExist: false,
    securityMode: o.MessageSecurityMode.SignAndEncrypt,
    securityPolicy: o.SecurityPolicy.Basic256Sha256,
    certificateFile: cert, privateKeyFile: key, clientCertificateManager: cm,
    connectionStrategy: { maxRetry: 0, initialDelay: 100, maxDelay: 200 },
    requestedSessionTimeout: 10000,
  });
  const result = {};
  try {
    await client.connect(url);
    const session = await client.createSession();
    const idx = (await session.readNamespaceArray()).indexOf(ns);
    const target = async (p) => (await session.translateBrowsePath(
      o.makeBrowsePath("ObjectsFolder", p))).targets[0].targetId;
    const obj = await target(`/${idx}:MeterDataReceiver`);
    const meth = await target(`/${idx}:MeterDataReceiver.${idx}:PushReadings`);
    const def = await session.getArgumentDefinition(meth);
    result.inputs = def.inputArguments.map((a) => a.name);
    const t = new Date(Date.UTC(2026, 2, 1, 12, 0, 0));
    const batch = (seqs, values) => ({
      Epoch: "node-opcua-epoch",
      Sequence: seqs.map((s) => [0, s]),   // UInt64 as [high, low]
      Meter: seqs.map(() => "node-meter"),
      Record: seqs.map((s, i) => `r${i % 2}`),
      Value: values,
      Unit: seqs.map(() => "Wh"),
      Quantity: seqs.map(() => "energy"),
      SourceTime: seqs.map(() => NULL_TIME),
      LoggerTime: seqs.map((s) => new Date(t.getTime() + 60000 * s)),
      Flags: seqs.map(() => ""),
    });
    const call = async (columns) => {
      const inputArguments = def.inputArguments.map((a) => ({
        dataType: a.dataType.value,
        arrayType: a.valueRank === 1 ? o.VariantArrayType.Array : o.VariantArrayType.Scalar,
        value: columns[a.name],
      }));
      const r = await session.call({ objectId: obj, methodId: meth, inputArguments });
      return { status: r.statusCode.name,
               out: (r.outputArguments || []).map((v) => v.value) };
    };
    result.first = await call(batch([1, 2, 3], ["1.5", "2", "12.340"]));
    result.again = await call(batch([1, 2, 3], ["1.5", "2", "12.340"]));
    result.repeated = await call(batch([4, 4], ["1", "2"]));
    const node = `ns=${idx};s=Loggers/${uri}/Meters/node-meter/r0`;
    for (let i = 0; i < 50; i++) {
      const dv = await session.read({ nodeId: node, attributeId: o.AttributeIds.Value });
      result.latest = dv.value.value;
      result.latest_status = dv.statusCode.name;
      if (result.latest === "12.340") break;
      await new Promise((r) => setTimeout(r, 100));
    }
    await session.close();
  } catch (e) {
    result.error = String(e && e.message ? e.message : e).split("\n")[0];
  }
  try { await client.disconnect(); } catch (e) {}
  console.log(JSON.stringify(result));
})();
"""


@pytest.fixture(scope="module")
def spki(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SharedPki]:
    shared = SharedPki(tmp_path_factory.mktemp("datapath-interop-pki"))
    yield shared
    shared.close()


def _node_pki(root: Path, spki: SharedPki) -> Path:
    """node-opcua's certificate-manager folders: our root and org CA trusted, with CRLs."""
    for sub in ("trusted/certs", "trusted/crl", "issuers/certs", "issuers/crl", "rejected"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for name in ("root", "acme"):
        cert = spki.pki.root_cert() if name == "root" else spki.pki.ca_cert("acme")
        der = cert.public_bytes(serialization.Encoding.DER)
        crl = spki.pki.crl(name).public_bytes(serialization.Encoding.DER)
        for kind in ("trusted", "issuers"):
            (root / kind / "certs" / f"{name}.der").write_bytes(der)
            (root / kind / "crl" / f"{name}.crl").write_bytes(crl)
    return root


def _push_with_node(tmp: Path, url: str, spki: SharedPki) -> dict[str, object]:
    from logger.tpm.filekey import load_key_file
    from tests.support.pki import DEVICE_KEY_PASSPHRASE

    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "push.js").write_text(PUSH_JS)
    (tmp / "cert.pem").write_bytes(spki.device.cert.public_bytes(serialization.Encoding.PEM))
    key = load_key_file(spki.device.state_dir / "device-key.pem", DEVICE_KEY_PASSPHRASE, "key")
    key_path = tmp / "key.pem"  # node-opcua reads plain PEM: a throw-away copy, 0600
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    )
    os.chmod(key_path, 0o600)
    proc = subprocess.run(
        [
            "node",
            str(tmp / "push.js"),
            url,
            str(tmp / "cert.pem"),
            str(key_path),
            str(_node_pki(tmp / "pki", spki)),
            spki.device.application_uri,
            contract.NAMESPACE_URI,
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "NODE_PATH": str(NODE_MODULES), "NODE_NO_WARNINGS": "1"},
        timeout=90,
        check=False,
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    assert lines, proc.stdout + proc.stderr
    return dict(json.loads(lines[-1]))


def test_node_opcua_pushes_through_the_declared_arguments(spki: SharedPki, tmp_path: Path) -> None:
    uri = spki.device.application_uri

    async def scenario() -> None:
        async with datapath_receiver(spki.rx, tmp_path) as (srv, _dp):
            got = await asyncio.to_thread(
                _push_with_node, tmp_path / "node", srv.endpoint_url, spki
            )
            assert "error" not in got, got
            assert got["inputs"] == [a.name for a in contract.PUSH_READINGS_INPUT]
            assert got["first"] == {"status": "Good", "out": [[0, 3], 3, 0]}
            assert got["again"] == {"status": "Good", "out": [[0, 3], 0, 3]}
            assert got["repeated"] == {"status": "BadSequenceNumberInvalid", "out": []}
            assert got["latest"] == "12.340" and got["latest_status"] == "Good"
            stored = [(r.sequence, r.value) async for r in srv.storage.export(uri)]
            assert stored == [(1, "1.5"), (2, "2"), (3, "12.340")]

    run(scenario(), timeout=120)
