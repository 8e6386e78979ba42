"""The web dashboard in a real headless Chromium (Debian's ``chromium`` driven by Playwright), on a running line
that publishes to a real Mosquitto: the page loads, the live picture updates, verdicts are listed with thumbnails,
and a threshold set on the page reaches the decision module and shows in the next MQTT result.

``deploy/install.sh dev`` installs chromium (apt) and the playwright package; the test skips, saying so, elsewhere.
"""

import json
import shutil
import threading
import urllib.error
import urllib.request

import cv2
import pytest

from edge_inspector.capture.demo_line import PartMaker
from edge_inspector.config import load_run_config
from edge_inspector.ops.dashboard import RecentResults
from edge_inspector.ops.http import OpsServer
from edge_inspector.pipeline.line import build_line
from edge_inspector.publish.broker import Topics
from tests.fixtures.broker import Subscriber
from tests.fixtures.bundles import make_tiny_bundle

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
TOKEN = "operator-secret"
STATION = "web-1"


@pytest.fixture
def running_line(tmp_path, mosquitto, monkeypatch):
    """A line judging a looped two-part folder at 5 parts/s, publishing to Mosquitto, with its dashboard."""
    monkeypatch.setenv("EDGE_INSPECTOR_HTTP_TOKEN", TOKEN)
    bundle = make_tiny_bundle(tmp_path / "bundle", 128, 128, image_threshold=0.085, pixel_threshold=0.07,
                              local=15, smooth=7)
    folder = tmp_path / "parts"
    folder.mkdir()
    maker = PartMaker(size=128, seed=4)
    cv2.imwrite(str(folder / "a-good.png"), maker.make(None).image)
    cv2.imwrite(str(folder / "b-spot.png"), maker.make("spot").image)
    config = load_run_config(None, [
        f"station={STATION}", f"model={bundle.path}", f"source={folder}", "capture.loop=true", "capture.fps=5",
        f"mqtt.url={mosquitto.url}", "archive.enabled=false", "http.port=1"])  # http.port: draw every overlay
    recent = RecentResults()
    line = build_line(config, sinks=[recent])
    server = OpsServer(line.loop, line.latest, line.publisher, port=0, recent=recent, control=line.apply_command,
                       station=STATION)
    runner = threading.Thread(target=line.run, args=([server],), daemon=True)
    runner.start()
    yield line, server
    line.request_stop()
    runner.join(30)


def post(url: str, doc: dict, token: str | None) -> tuple[int, dict]:
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {token}"} if token else {})}
    request = urllib.request.Request(url, json.dumps(doc).encode(), headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def wait_for_server(server: OpsServer) -> None:
    """The line starts its services once the loop runs: wait until the dashboard answers."""
    for _ in range(200):
        if server.port:
            try:
                with urllib.request.urlopen(server.url + "/healthz", timeout=2):
                    return
            except OSError:
                pass
        threading.Event().wait(0.05)
    raise AssertionError("dashboard server did not start")


def test_write_actions_need_the_token(running_line, monkeypatch):
    line, server = running_line
    wait_for_server(server)
    url = server.url + "/api/command"
    assert post(url, {"kind": "pause"}, None)[0] == 401
    assert post(url, {"kind": "pause"}, "wrong")[0] == 401
    status, answer = post(url, {"kind": "set_threshold", "value": -1}, TOKEN)
    assert status == 400 and "must be > 0" in answer["error"]  # the MQTT command table's own validation
    assert not line.loop.paused
    monkeypatch.delenv("EDGE_INSPECTOR_HTTP_TOKEN")
    status, answer = post(url, {"kind": "pause"}, TOKEN)
    assert status == 403 and "EDGE_INSPECTOR_HTTP_TOKEN" in answer["error"]  # no token configured: read-only
    assert not line.loop.paused


def test_dashboard_in_chromium_shows_the_line_and_changes_the_threshold(running_line, mosquitto, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright not installed (deploy/install.sh dev)")
    if not shutil.which(CHROMIUM):
        pytest.skip("chromium not installed (deploy/install.sh dev installs Debian's chromium)")
    line, server = running_line
    wait_for_server(server)
    topics = Topics.for_station("edge-inspector", STATION)
    subscriber = Subscriber(mosquitto, [topics.result])
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True,
                                             args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(server.url + "/")
            page.wait_for_function("Number(document.getElementById('judged').textContent) >= 2", timeout=20000)
            live = page.locator("#live")
            first = live.screenshot()
            page.wait_for_function("document.querySelectorAll('#recent img').length >= 2", timeout=20000)
            for _ in range(50):  # the MJPEG stream replaces the picture as parts are judged
                if live.screenshot() != first:
                    break
                page.wait_for_timeout(200)
            else:
                raise AssertionError("the live picture never changed")
            assert page.locator("#recent b.FAIL").count() >= 1  # the spot part is listed as FAIL
            assert "region" in page.locator("#recent").inner_text()
            page.fill("#token", TOKEN)
            page.fill("#threshold-input", "0.3")  # within the bundle's command range (4 x 0.085); the spot scores 0.12
            page.click("#threshold-set")
            page.wait_for_function("document.getElementById('message').textContent.includes('set_threshold: done')",
                                   timeout=10000)
            page.wait_for_function("document.getElementById('threshold').textContent === '0.3000'", timeout=10000)
            page.screenshot(path=str(tmp_path / "dashboard.png"))
        finally:
            browser.close()
    assert line.loop.params.threshold == 0.3  # the decision module got it
    try:
        assert subscriber.wait_for(lambda s: any(json.loads(p)["threshold"] == 0.3 for p in s.on(topics.result)))
    finally:
        subscriber.close()
    after = [json.loads(p) for p in subscriber.on(topics.result) if json.loads(p)["threshold"] == 0.3]
    assert {m["verdict"] for m in after} == {"PASS"}  # neither part reaches 0.3
