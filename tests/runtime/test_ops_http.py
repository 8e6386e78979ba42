"""The ops HTTP server over real HTTP, beside a real loop on the real ORT engine and the tiny fixture bundle."""

import json
import socket
import threading
import time
import urllib.error
import urllib.request

import cv2
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from edge_inspector.bundle.store import load_bundle
from edge_inspector.capture.demo_line import DemoLine
from edge_inspector.config import CaptureSettings, DecisionSettings, EngineSettings, load_run_config
from edge_inspector.engines.ort import OrtEngine
from edge_inspector.errors import ConfigError, EngineError
from edge_inspector.ops.http import OpsServer
from edge_inspector.pipeline.loop import InspectionLoop
from edge_inspector.pipeline.sinks import CollectingSink, LatestResult
from tests.fixtures.broker import free_port
from tests.fixtures.bundles import make_tiny_bundle

SIZE = 64
TRIGGERED = CaptureSettings(mode="triggered", trigger_source="mqtt")


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return load_bundle(make_tiny_bundle(tmp_path_factory.mktemp("ops") / "tiny", SIZE, SIZE).path)


@pytest.fixture(scope="module")
def engine(bundle):
    return OrtEngine(bundle, EngineSettings(intra_op_threads=1))


class GatedEngine:
    """The real engine behind a gate the test opens: an accelerator that hangs (cannot be provoked for real)."""

    def __init__(self, engine, fail: bool = False):
        self.engine, self.fail, self.gate = engine, fail, threading.Event()
        self.name = engine.name
        if not fail:
            self.gate.set()

    def infer(self, image):
        if self.fail:
            raise EngineError("device lost")
        self.gate.wait()
        return self.engine.infer(image)

    def warmup(self, runs=2):
        pass

    def describe(self):
        return self.engine.describe()

    def close(self):
        pass


def get(url):
    """(status, content type, body) of a real GET, error statuses included."""
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.headers["Content-Type"], response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.headers["Content-Type"], error.read()


def get_json(url):
    status, content_type, body = get(url)
    assert content_type == "application/json"
    return status, json.loads(body)


def metrics(url):
    """{sample name + sorted labels: value} from a real scrape."""
    status, _, body = get(url + "/metrics")
    assert status == 200
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(body.decode()) for s in family.samples}


def wait_for(condition, what, timeout_s=20.0):
    deadline = time.monotonic() + timeout_s  # a generous bound against a hang, not a speed assertion
    while not condition():
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.02)


@pytest.fixture
def line(engine, bundle):
    """A started triggered loop (parts judged on ``loop.trigger``) with an ops server on a free port."""
    made = []

    def make(engine=engine, stuck_after_s=None, decision=None):
        latest, collector = LatestResult(), CollectingSink(keep_images=True)
        loop = InspectionLoop(DemoLine(parts=20, size=SIZE, seed=3, defect_rate=0.5), engine, bundle.manifest,
                              [collector, latest], capture=TRIGGERED, decision=decision, overlay="all")
        loop.start()
        server = OpsServer(loop, latest, port=0, stuck_after_s=stuck_after_s).start()
        made.append((loop, server))
        return loop, server, collector

    yield make
    for loop, server in made:
        loop.stop()
        server.stop()


def test_endpoints_follow_a_running_line(line, bundle):
    loop, server, collector = line()
    url = server.url
    status, health = get_json(url + "/healthz")
    assert status == 200 and health["alive"] is True
    status, body = get_json(url + "/preview.jpg")
    assert status == 404 and "no part judged" in body["error"]
    status, ready = get_json(url + "/readyz")
    assert status == 200 and ready["ready"] is True and ready["judged"] == 0 and ready["mode"] == "triggered"
    before = metrics(url)
    assert before[("edge_inspector_parts_total", (("verdict", "FAIL"),))] == 0

    for n in range(4):
        loop.trigger(f"plc-{n}")
    wait_for(lambda: len(collector.results) == 4, "4 judged parts")

    after = metrics(url)
    verdicts = [r.verdict.value for r in collector.results]
    for verdict in ("PASS", "FAIL", "UNKNOWN"):
        assert after[("edge_inspector_parts_total", (("verdict", verdict),))] == verdicts.count(verdict)
    assert 0 < verdicts.count("FAIL") < 4  # the demo line at 50 % defects gave both verdicts with this seed
    assert after[("edge_inspector_frames_read_total", ())] == 4
    assert after[("edge_inspector_inference_errors_total", ())] == 0
    inference_p50 = after[("edge_inspector_stage_latency_seconds", (("quantile", "0.5"), ("stage", "inference")))]
    inference_p99 = after[("edge_inspector_stage_latency_seconds", (("quantile", "0.99"), ("stage", "inference")))]
    assert 0 < inference_p50 <= inference_p99
    info = [labels for (name, labels) in after if name == "edge_inspector_engine_info"][0]
    assert ("model_id", bundle.manifest.model_id) in info and ("backend", "onnxruntime") in info
    assert after[("edge_inspector_source_up", ())] == 1
    assert ("process_resident_memory_bytes", ()) in after

    status, content_type, jpeg = get(url + "/preview.jpg")
    assert status == 200 and content_type == "image/jpeg"
    preview = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    newest = collector.results[-1].overlay
    assert preview.shape == newest.shape
    assert np.abs(preview.astype(int) - newest.astype(int)).mean() < 8  # the newest overlay, up to JPEG loss

    loop.pause()
    status, ready = get_json(url + "/readyz")
    assert status == 503 and "paused" in ready["reason"]
    loop.resume()
    assert get_json(url + "/readyz")[0] == 200
    status, body = get_json(url + "/nothing-here")
    assert status == 404 and "/metrics" in body["endpoints"]

    loop.stop()
    status, ready = get_json(url + "/readyz")
    assert status == 503 and "stopped" in ready["reason"]
    server.stop()
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(url + "/healthz", timeout=5)


def test_readyz_is_503_after_a_fail_safe_verdict(line, engine):
    failing = GatedEngine(engine, fail=True)
    loop, server, collector = line(failing, decision=DecisionSettings(fail_safe_verdict="UNKNOWN"))
    loop.trigger("plc-1")
    wait_for(lambda: len(collector.results) == 1, "the fail-safe result")
    status, ready = get_json(server.url + "/readyz")
    assert status == 503 and "fail-safe" in ready["reason"] and "device lost" in ready["reason"]
    scraped = metrics(server.url)
    assert scraped[("edge_inspector_inference_errors_total", ())] == 1
    assert scraped[("edge_inspector_parts_total", (("verdict", "UNKNOWN"),))] == 1
    assert get_json(server.url + "/healthz")[0] == 200  # alive, just not ready


def test_readyz_reports_a_stuck_loop_and_recovers(line, engine):
    hung = GatedEngine(engine)
    hung.gate.clear()
    loop, server, collector = line(hung, stuck_after_s=0.2, decision=DecisionSettings(inference_timeout_s=60))
    loop.trigger("plc-1")

    def stuck():
        status, ready = get_json(server.url + "/readyz")
        return status == 503 and "stuck" in ready["reason"] and ready["pending"] == 1

    wait_for(stuck, "/readyz to report the stuck loop")
    hung.gate.set()
    wait_for(lambda: len(collector.results) == 1, "the part once the engine answers")
    status, ready = get_json(server.url + "/readyz")
    assert status == 200 and ready["pending"] == 0


def test_port_in_use_is_a_config_error(line):
    loop, server, _ = line()
    with pytest.raises(ConfigError, match="http.port"):
        OpsServer(loop, LatestResult(), port=server.port).start()


def test_idle_and_unfinished_connections_hold_no_thread_and_block_nobody(line):
    """Issue 15 item 4: the former http.server took a thread per connection and kept it while the client sat idle."""
    loop, server, _ = line()
    threads_before = threading.active_count()
    idle = [socket.create_connection(("127.0.0.1", server.port), timeout=5) for _ in range(60)]
    unfinished = [socket.create_connection(("127.0.0.1", server.port), timeout=5) for _ in range(20)]
    try:
        for connection in unfinished:  # a request whose headers never end
            connection.sendall(b"GET /healthz HTTP/1.1\r\nHost: edge\r\nX-Slow: ")
        status, health = get_json(server.url + "/healthz")
        assert status == 200 and health["alive"] is True
        assert threading.active_count() <= threads_before + 2  # 80 connections: a thread each would be far above this
    finally:
        for connection in idle + unfinished:
            connection.close()
    assert get_json(server.url + "/readyz")[0] == 200


class GatedSource:
    """The demo line in batches: after each batch it waits until the test opens that batch's gate; then it ends."""

    live = False

    def __init__(self, *batches):
        self.line = DemoLine(parts=sum(batches), size=SIZE, seed=5)
        self.name = self.line.name
        self.gates = [threading.Event() for _ in batches]
        self.ends = [sum(batches[:i + 1]) for i in range(len(batches))]  # frames read when each gate is met
        self.taken = 0

    def open(self):
        self.line.open()

    def read(self):
        for end, gate in zip(self.ends, self.gates):
            if self.taken == end:
                gate.wait()
        self.taken += 1
        return self.line.read()

    def close(self):
        self.line.close()


def start_run_line(config, source):
    """``run_line`` on a thread (as ``edge-inspector run`` would run it); returns the thread and its result."""
    from edge_inspector.cli.run import run_line

    done = {}
    runner = threading.Thread(target=lambda: done.update(stats=run_line(config, source=source, quiet=True)))
    runner.start()
    return runner, done


def scrape_when_up(url):
    try:
        return metrics(url)
    except urllib.error.URLError:
        return {}  # not listening yet


def parts_total(scraped):
    return sum(v for (name, _), v in scraped.items() if name == "edge_inspector_parts_total")


def line_config(bundle, port, **explicit):
    return load_run_config(None, [f"http.port={port}", "engine.intra_op_threads=1"],
                           {"model": str(bundle.path), "archive": {"enabled": False}, **explicit})


def test_run_line_serves_http_while_running_and_stops_it(bundle):
    port = free_port()
    source = GatedSource(3)
    runner, done = start_run_line(line_config(bundle, port, mqtt={"enabled": False}), source)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: parts_total(scrape_when_up(url)) == 3, "three parts on /metrics")
        assert get(url + "/preview.jpg")[0] == 200
        assert get_json(url + "/readyz")[0] == 200
        assert not any(name.startswith("edge_inspector_mqtt") for name, _ in metrics(url))  # MQTT is off
    finally:
        source.gates[-1].set()
        runner.join(30)
    assert done["stats"]["counts"]["judged"] == 3
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(url + "/healthz", timeout=5)


def test_metrics_follow_the_broker_and_the_spool(bundle, mosquitto, tmp_path):
    port = free_port()
    source = GatedSource(2, 2)
    mqtt = {"url": mosquitto.url, "enabled": True, "spool_dir": str(tmp_path / "spool"), "heartbeat_s": 1.0}
    runner, done = start_run_line(line_config(bundle, port, mqtt=mqtt), source)
    url = f"http://127.0.0.1:{port}"

    def sample(name):
        return scrape_when_up(url).get((f"edge_inspector_{name}", ()))

    try:
        wait_for(lambda: sample("results_acked_total") == 2 and sample("mqtt_connected") == 1, "2 acked results")
        assert sample("spool_pending") == 0
        mosquitto.stop()
        wait_for(lambda: sample("mqtt_connected") == 0, "the lost broker on /metrics")
        source.gates[0].set()
        wait_for(lambda: sample("spool_pending") == 2, "two results spooled while the broker is away")
        mosquitto.start()
        wait_for(lambda: sample("results_acked_total") == 4 and sample("spool_pending") == 0, "the spool replayed")
        assert sample("mqtt_disconnects_total") >= 1
    finally:
        for gate in source.gates:
            gate.set()
        runner.join(30)
    assert done["stats"]["counts"]["judged"] == 4
