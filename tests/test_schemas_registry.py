"""Confluent wire format through confluent-kafka's Schema Registry serializers.

No Confluent registry can be installed here, so the test runs a minimal registry
speaking the same REST subset (register a schema, fetch it by id); the
serializers, the wire framing and Avro resolution are the real ones.
"""

from __future__ import annotations

import json
import shutil
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from tally.schemas.codec import SCHEMA_DIR, Codec, DecodeError

from tests.conftest import free_port

RECORD = {"event_id": "0190f3c2-5b7e-7a11-8c3d-112233445566", "event": "report.created",
          "feature_area": "report", "tenant_id": "t1", "workspace_id": "w1", "occurred_at": 1763780000000,
          "metadata": {"report_type": "permission_posture", "finding_count": 3}}


class MiniRegistry(BaseHTTPRequestHandler):
    schemas: list[str] = []
    subjects: dict[str, list[int]] = {}

    def _reply(self, code: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/vnd.schemaregistry.v1+json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self) -> None:  # noqa: N802 - http.server API
        parts = self.path.split("?")[0].strip("/").split("/")
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if len(parts) == 3 and parts[0] == "subjects" and parts[2] == "versions":
            schema = body["schema"]
            if schema not in self.schemas:
                self.schemas.append(schema)
            sid = self.schemas.index(schema) + 1
            versions = self.subjects.setdefault(parts[1], [])
            if sid not in versions:
                versions.append(sid)
            self._reply(200, {"id": sid, "subject": parts[1], "version": versions.index(sid) + 1})
            return
        self._reply(404, {"error_code": 40401, "message": f"not in the mini registry: {self.path}"})

    def do_GET(self) -> None:  # noqa: N802
        parts = self.path.split("?")[0].strip("/").split("/")
        if len(parts) == 3 and parts[:2] == ["schemas", "ids"] and int(parts[2]) <= len(self.schemas):
            self._reply(200, {"schema": self.schemas[int(parts[2]) - 1], "schemaType": "AVRO"})
            return
        self._reply(404, {"error_code": 40403, "message": f"not found: {self.path}"})

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def registry_url():
    MiniRegistry.schemas, MiniRegistry.subjects = [], {}
    server = ThreadingHTTPServer(("127.0.0.1", free_port()), MiniRegistry)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()


def test_confluent_wire_format_round_trip(registry_url):
    codec = Codec(registry_url=registry_url)
    data = codec.encode("product_event", RECORD)
    assert data[0] == 0 and int.from_bytes(data[1:5], "big") == 1  # magic 0 + schema id
    assert list(MiniRegistry.subjects) == ["dev.tally.product.ProductEvent"]  # RecordNameStrategy
    fresh = Codec(registry_url=registry_url)  # looks the writer schema up by id
    rec = fresh.decode("product_event", data)
    assert rec["tenant_id"] == "t1" and rec["metadata"] == RECORD["metadata"]
    # Readers take both encodings, whatever the setting.
    assert fresh.decode("product_event", Codec().encode("product_event", RECORD))["tenant_id"] == "t1"


def test_confluent_record_without_registry_is_a_decode_error(registry_url):
    data = Codec(registry_url=registry_url).encode("product_event", RECORD)
    with pytest.raises(DecodeError, match="TALLY_SCHEMA_REGISTRY_URL"):
        Codec().decode("product_event", data)
    with pytest.raises(DecodeError):
        Codec(registry_url=registry_url).decode("product_event", b"\x00\x00\x00\x00\x63junk")


def test_confluent_old_version_resolves_to_newest(tmp_path, registry_url):
    old = Codec(registry_url=registry_url).encode("product_event", RECORD)  # written with v1
    folder = tmp_path / "avro"
    shutil.copytree(SCHEMA_DIR, folder)
    schema = json.loads((folder / "product_event.v1.avsc").read_text())
    schema["fields"].append({"name": "sdk_version", "doc": "SDK version.", "type": "string", "default": "?"})
    (folder / "product_event.v2.avsc").write_text(json.dumps(schema))
    rec = Codec(folder, registry_url=registry_url).decode("product_event", old)
    assert rec["sdk_version"] == "?" and rec["event"] == "report.created"


@pytest.mark.integration
def test_sdk_uses_confluent_format_when_a_registry_is_configured(tally_env, registry_url):
    from tally.producers.sdk import Client

    from tally.config import Settings
    from tests.test_sdk import read_all

    settings = Settings.from_env({**tally_env.vars, "TALLY_SCHEMA_REGISTRY_URL": registry_url})
    with Client(settings, strict=True) as client:
        assert client.track("report.created", tenant_id="t1", workspace_id="w1", actor="u1",
                            metadata={"report_type": "permission_posture"})
        assert client.flush(20) == 0
    [msg] = read_all(settings, 1)
    assert msg.value()[0] == 0  # Confluent framing, schema id from the registry
    rec = Codec(registry_url=registry_url).decode("product_event", msg.value())
    assert rec["event"] == "report.created" and rec["metadata"] == {"report_type": "permission_posture"}
