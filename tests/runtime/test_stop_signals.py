"""SIGTERM (docker stop, Kubernetes, systemd) and SIGINT stop a running line in order (issue 16, item 3).

A real ``edge-inspector run`` process on a paced, looping image folder publishes to a real Mosquitto; the signal
must leave no captured part unjudged, print the summary, exit 128 + the signal number and leave a clean retained
``offline`` status stamped with the stop time (not the last will, whose time is the connect time).
"""

import json
import os
import signal
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import cv2
import pytest

from edge_inspector.capture.demo_line import PartMaker
from edge_inspector.publish.broker import Topics
from tests.fixtures.broker import Subscriber
from tests.fixtures.bundles import make_tiny_bundle

STATION = "sig-1"
REPO = Path(__file__).resolve().parents[2]


def start_line(tmp_path: Path, broker_url: str) -> subprocess.Popen:
    bundle = make_tiny_bundle(tmp_path / "bundle", 128, 128, image_threshold=0.085, pixel_threshold=0.07)
    folder = tmp_path / "parts"
    folder.mkdir()
    maker = PartMaker(size=128, seed=3)
    for index in range(4):
        cv2.imwrite(str(folder / f"{index}.png"), maker.make(None if index % 2 else "spot").image)
    command = [sys.executable, "-m", "edge_inspector", "run", "--source", str(folder), "--model", str(bundle.path),
               "--station", STATION, "--mqtt", broker_url, "--quiet", "capture.loop=true", "capture.fps=20",
               "archive.enabled=false", f"state_dir={tmp_path / 'state'}"]
    return subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), *sys.path])})


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_stop_signal_drains_summarises_and_says_offline(mosquitto, tmp_path, signum):
    topics = Topics.for_station("edge-inspector", STATION)
    subscriber = Subscriber(mosquitto, [topics.result, topics.status])
    process = start_line(tmp_path, mosquitto.url)
    try:
        assert subscriber.wait_for(lambda s: len(s.on(topics.result)) >= 5), process.stderr.read()
        signalled_at = time.time()
        process.send_signal(signum)
        _, err = process.communicate(timeout=30)
        # everything judged is published before the offline status (the spool drains on a clean stop)
        assert subscriber.wait_for(lambda s: json.loads(s.on(topics.status)[-1])["state"] == "offline")
    finally:
        if process.poll() is None:
            process.kill()
        subscriber.close()
    assert process.returncode == 128 + signum, err
    summary = json.loads([line for line in err.splitlines() if line.startswith("{")][-1])
    results = [json.loads(p) for p in subscriber.on(topics.result)]
    assert summary["judged"] == len(results) == len({r["sequence"] for r in results})
    assert f"{signal.Signals(signum).name}: stopping" in err
    online, offline = (json.loads(p) for p in subscriber.on(topics.status)[-2:])
    assert online["state"] == "online" and offline["state"] == "offline"
    assert datetime.fromisoformat(offline["ts"]).timestamp() >= signalled_at  # the stop time, not the connect time
