"""Issue 15, item 7: faults are diagnosed in words, a stream absent at start is waited for, and MQTT.md is the truth.

A TLS failure (wrong CA, host name not in the certificate) says what TLS rejected, not just "unreachable"; a
broker whose ACL refuses the station's results says so (MQTT 5 reason code) and keeps them pending; a network
stream that is down at start is retried like a camera that drops out; the documented payloads are the real ones.
"""

from __future__ import annotations

import functools
import http.server
import json
import re
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge_inspector.capture.sources import VideoSource
from edge_inspector.config import CaptureSettings, EngineSettings, MqttSettings, TlsSettings
from edge_inspector.engines.ort import OrtEngine
from edge_inspector.bundle.store import load_bundle
from edge_inspector.pipeline.loop import InspectionLoop
from edge_inspector.pipeline.sinks import CollectingSink
from edge_inspector.publish.broker import Topics
from edge_inspector.publish.mqtt import ResultPublisher
from edge_inspector.results import Verdict
from tests.fixtures.broker import SKIP_REASON, MosquittoBroker, Subscriber, find_mosquitto, free_port
from tests.fixtures.bundles import make_tiny_bundle
from tests.fixtures.inspection_results import make_result
from tests.fixtures.plant_broker import plant_broker, read_env_file  # noqa: F401  (fixture)
from tests.fixtures.tls_certs import make_secure_listener

MQTT_DOC = Path(__file__).resolve().parents[2] / "deploy" / "MQTT.md"


@pytest.fixture
def tls_broker(tmp_path):
    binary = find_mosquitto()
    if binary is None:
        pytest.skip(SKIP_REASON)
    certs = tmp_path / "certs"
    broker = MosquittoBroker(tmp_path / "broker", binary, secure=make_secure_listener(certs, "inspector", "pw"))
    broker.start()
    yield broker, certs
    broker.stop()


def wait_for(condition, timeout_s=20.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


@pytest.mark.parametrize("case", ["wrong CA", "host name"])
def test_tls_failures_say_what_tls_rejected(tls_broker, tmp_path, case):
    broker, certs = tls_broker
    ca = certs / "ca.pem"
    url = broker.secure_url
    if case == "wrong CA":
        ca = make_secure_listener(tmp_path / "other", "x", "y").ca_file  # a CA that did not sign the broker's
    else:
        url = url.replace("127.0.0.1", "localhost")  # the certificate names 127.0.0.1 only
    tls = TlsSettings(ca_file=str(ca), cert_file=str(certs / "client.pem"), key_file=str(certs / "client.key"))
    publisher = ResultPublisher(MqttSettings(url=url, tls=tls, spool_dir=str(tmp_path / "spool")), "line-t")
    publisher.start()
    try:
        assert wait_for(lambda: "TLS" in (publisher.health.last_error or "")), publisher.health.last_error
        error = publisher.health.last_error
        assert "was not accepted" in error and "certificate" in error
        # OpenSSL's own words: which one a wrong CA gives depends on whether the broker sends its CA along.
        expected = ("Hostname mismatch",) if case == "host name" else ("self-signed certificate in certificate chain",
                                                                        "unable to get local issuer certificate")
        assert any(words in error for words in expected), error
        assert any("TLS" in problem for problem in publisher.health.problems)
    finally:
        publisher.stop()


def test_a_broker_acl_refusing_results_is_reported_and_nothing_is_lost(plant_broker, tmp_path, monkeypatch):
    """station-1's account publishing as station 'station-2' (a copied config): the ACL refuses its results."""
    for key, value in read_env_file(plant_broker.env_dir / "station-1.env").items():
        monkeypatch.setenv(key, value)
    settings = MqttSettings(url=plant_broker.url, tls=TlsSettings(ca_file=str(plant_broker.ca_file)),
                            spool_dir=str(tmp_path / "spool"))
    publisher = ResultPublisher(settings, "station-2")
    publisher.start()
    try:
        for i in range(5):
            publisher.publish(make_result(i, Verdict.FAIL))
        assert wait_for(lambda: publisher.health.refused is not None), publisher.health
        health = publisher.health
        assert "Not authorized" in health.refused and "edge-inspector/station-2/result" in health.refused
        assert health.pending == 5 and health.acked == 0  # kept, to be sent once the ACL is fixed
        assert any("refuses results" in problem for problem in health.problems)
    finally:
        publisher.stop(drain_timeout=0)


def test_wrong_credentials_are_reported_as_such(plant_broker, tmp_path, monkeypatch):
    monkeypatch.setenv("EDGE_INSPECTOR_MQTT_USERNAME", "station-1")
    monkeypatch.setenv("EDGE_INSPECTOR_MQTT_PASSWORD", "not-the-password")
    publisher = ResultPublisher(MqttSettings(url=plant_broker.url, tls=TlsSettings(ca_file=str(plant_broker.ca_file)),
                                             spool_dir=str(tmp_path / "spool")), "station-1")
    publisher.start()
    try:
        assert wait_for(lambda: "refused" in (publisher.health.last_error or ""))
        assert "Not authorized" in publisher.health.last_error and "password" in publisher.health.last_error
    finally:
        publisher.stop(drain_timeout=0)


class _StreamServer:
    """A video stream over HTTP (what FFmpeg reads like any network camera), started when the test says."""

    def __init__(self, folder: Path):
        writer = cv2.VideoWriter(str(folder / "line.avi"), cv2.VideoWriter_fourcc(*"MJPG"), 10, (128, 128))
        for i in range(40):
            writer.write(np.full((128, 128, 3), 60 + i, np.uint8))
        writer.release()

        class Quiet(http.server.SimpleHTTPRequestHandler):
            def log_message(self, *args):
                pass

        self._handler = functools.partial(Quiet, directory=str(folder))
        self._server: http.server.ThreadingHTTPServer | None = None

    def start(self, port: int) -> None:
        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", port), self._handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()


def test_a_stream_down_at_start_is_retried_like_a_camera(tmp_path):
    port = free_port()
    server = _StreamServer(tmp_path)
    bundle = load_bundle(make_tiny_bundle(tmp_path / "bundle", 64, 64).path)
    engine = OrtEngine(bundle, EngineSettings(intra_op_threads=1))
    capture = CaptureSettings(read_timeout_s=2, reopen_backoff_s=(0.2, 0.5), max_frames=5)
    sink = CollectingSink()
    loop = InspectionLoop(VideoSource(f"http://127.0.0.1:{port}/line.avi", capture), engine, bundle.manifest,
                          [sink], capture=capture)
    loop.start()  # the stream is not there yet: not an error
    try:
        assert loop.snapshot()["source"]["status"] == "reconnecting"
        time.sleep(1.0)
        server.start(port)
        assert loop.wait(60), loop.snapshot()
    finally:
        loop.stop()
        server.stop()
        engine.close()
    assert len(sink.results) == 5 and all(r.error is None for r in sink.results)


def test_mqtt_doc_matches_the_payloads(mosquitto, tmp_path):
    text = MQTT_DOC.read_text()
    topics = Topics.for_station("test", "station-1")
    subscriber = Subscriber(mosquitto, [topics.heartbeat, topics.status])
    publisher = ResultPublisher(MqttSettings(url=mosquitto.url, topic_prefix="test", heartbeat_s=0.2,
                                             spool_dir=str(tmp_path / "spool")), "station-1", model_id="m")
    publisher.start()
    try:
        assert subscriber.wait_for(lambda s: s.on(topics.heartbeat) and s.on(topics.status))
    finally:
        publisher.stop()
        subscriber.close()
    heartbeat = json.loads(subscriber.on(topics.heartbeat)[0])
    documented = json.loads(re.search(r"Heartbeat example:\s*```json\n(.*?)```", text, re.S).group(1))
    line_fields = {"counts", "paused", "camera"}  # added by the line (pipeline.line.Line.heartbeat)
    assert set(documented) - line_fields == set(heartbeat), "the heartbeat example in MQTT.md is not the payload"
    status = json.loads(subscriber.on(topics.status)[0])
    for field in status:
        assert f'"{field}"' in text, f"status field {field} is not documented in MQTT.md"
    assert "`<station>-<run_id>-<frame_index>`" in text  # what pipeline.judge makes for untriggered parts
