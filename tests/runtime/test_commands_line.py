"""`edge-inspector run` / bare `--camera` / `demo` through the real CLI entry point."""

import json

import cv2
import pytest
import yaml

from edge_inspector import cli
from edge_inspector.capture.demo_line import PartMaker
from edge_inspector.cli.run import explicit_flags
from tests.fixtures.bundles import make_tiny_bundle

OFFLINE = ["mqtt.enabled=false", "archive.enabled=false"]


@pytest.fixture
def bundle_dir(tmp_path):
    return make_tiny_bundle(tmp_path / "bundle", 128, 128, image_threshold=0.085, pixel_threshold=0.07,
                            local=15, smooth=7).path


@pytest.fixture
def parts(tmp_path):
    maker = PartMaker(size=128, seed=9)
    folder = tmp_path / "parts" / "test"
    for name, defect in (("good/0.png", None), ("good/1.png", None), ("spot/0.png", "spot")):
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(folder / name), maker.make(defect).image)
    return tmp_path / "parts"


def test_run_on_a_folder_prints_a_line_per_part_and_a_summary(bundle_dir, parts, capsys):
    code = cli.main(["run", "--source", str(parts), "--model", str(bundle_dir), *OFFLINE])
    out, err = capsys.readouterr()
    assert code == 0
    lines = out.strip().splitlines()
    assert len(lines) == 3 and "test/spot/0.png" in lines[2] and " FAIL " in lines[2] and "truth: defect" in lines[2]
    assert all(" PASS " in line and "truth: good" in line for line in lines[:2])
    assert json.loads(err.strip().splitlines()[-1]) == {"judged": 3, "pass": 2, "fail": 1, "unknown": 0,
                                                        "dropped": 0, "errors": 0}


def test_flags_win_over_overrides_and_the_file(bundle_dir, parts, tmp_path, capsys):
    config = tmp_path / "line.yaml"
    config.write_text(yaml.safe_dump({"source": "/nowhere", "model": "/nowhere", "decision": {"threshold": 1000.0}}))
    code = cli.main(["run", "--config", str(config), "--source", str(parts), "--model", str(bundle_dir),
                     "--max-frames", "2", "--quiet", "decision.threshold=0.0001", *OFFLINE])
    out, err = capsys.readouterr()
    assert code == 0 and out == ""
    assert json.loads(err.strip().splitlines()[-1])["fail"] == 2  # the override beat the file's 1000


def test_bare_camera_flag_means_run():
    parser = cli.argparse.ArgumentParser()
    from edge_inspector.cli import run as run_command

    run_command.add_arguments(parser)
    args = parser.parse_args(["--camera", "0", "--mqtt", "mqtt://plc:1883", "--show"])
    assert explicit_flags(args) == {"source": "0", "show": True, "mqtt": {"url": "mqtt://plc:1883", "enabled": True}}


def test_a_corrupt_bundle_is_a_clear_error(bundle_dir, parts, capsys):
    (bundle_dir / "model.onnx").write_bytes(b"garbage")
    code = cli.main(["run", "--source", str(parts), "--model", str(bundle_dir), *OFFLINE])
    err = capsys.readouterr().err
    assert code == 2 and "error:" in err and "does not match its manifest" in err


def test_a_missing_camera_is_a_clear_error(bundle_dir, capsys):
    code = cli.main(["run", "--source", "/nowhere/clip.mp4", "--model", str(bundle_dir), *OFFLINE])
    assert code == 2 and "Video file not found: /nowhere/clip.mp4" in capsys.readouterr().err


def test_show_without_a_display_says_so_and_runs(bundle_dir, parts, monkeypatch, capsys):
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    code = cli.main(["run", "--source", str(parts), "--model", str(bundle_dir), "--show", "--quiet", *OFFLINE])
    assert code == 0 and "no display" in capsys.readouterr().err


def test_demo_runs_the_bundled_model_and_summarises(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the demo model is package data, found from any folder
    code = cli.main(["demo", "--parts", "10", "--mqtt", "mqtt://127.0.0.1:1"])
    out = capsys.readouterr().out.strip().splitlines()
    assert code == 0 and "printing only" in out[0]
    assert len([line for line in out if line.startswith("part-")]) == 10
    summary = json.loads(out[-1].removeprefix("summary: "))
    assert summary["parts"] == 10 and summary["accuracy"] >= 0.8
    assert not (tmp_path / "var").exists()  # nothing spooled or archived by the demo


def test_demo_writes_a_training_dataset(tmp_path, capsys):
    code = cli.main(["demo", "--write-dataset", str(tmp_path / "data"), "--train-good", "4"])
    assert code == 0 and len(list((tmp_path / "data/demo_gravel/train/good").glob("*.png"))) == 4


def test_a_camera_that_is_not_there_is_one_clear_error(bundle_dir, capfd):
    code = cli.main(["--camera", "99", "--model", str(bundle_dir), *OFFLINE])
    err = capfd.readouterr().err
    assert code == 2 and "Cannot open camera:99" in err and "is a camera connected" in err
    assert "VIDEOIO" not in err  # OpenCV's own backend noise is kept off the console


def test_the_default_demo_judges_every_part_right_with_regions(capsys, tmp_path, monkeypatch):
    """The bar of issue 16: the default demo run (seed 0, which took no part in choosing the model's head or
    thresholds) judges every part right, and every FAIL says where."""
    monkeypatch.chdir(tmp_path)
    assert cli.main(["demo", "--interval", "0", "--mqtt", "mqtt://127.0.0.1:1", "--http-port", "0"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    summary = json.loads(out[-1].removeprefix("summary: "))
    assert summary["parts"] == 24 and summary["accuracy"] >= 0.98
    fails = [line for line in out if line.startswith("part-") and " FAIL " in line]
    assert fails and all(" region" in line for line in fails)


def test_the_demo_heat_map_tints_defects_not_whole_parts():
    """Issue 16: the heat map tinted the whole part. On the demo line a PASS overlay is the frame plus the verdict
    label; a FAIL overlay tints less than half of the part."""
    import socket

    import numpy as np

    from edge_inspector.capture.demo_line import DemoLine
    from edge_inspector.cli.run import run_line
    from edge_inspector.config import load_run_config
    from edge_inspector.pipeline.sinks import CollectingSink

    with socket.create_server(("127.0.0.1", 0)) as probe:  # the dashboard makes the line draw every part
        port = probe.getsockname()[1]
    config = load_run_config(None, ["model=demo", "source=demo", *OFFLINE, f"http.port={port}"])
    collector = CollectingSink(keep_images=True)
    run_line(config, source=DemoLine(config.capture, parts=12, seed=0, interval_s=0), quiet=True,
             extra_sinks=[collector])
    verdicts = {r.verdict.value for r in collector.results}
    assert verdicts == {"PASS", "FAIL"}
    for result in collector.results:
        changed = np.any(result.overlay.astype(int) != result.frame.astype(int), axis=2)
        changed[:60, :160] = False  # the verdict label
        share = changed.mean()
        assert share < (0.01 if result.verdict.value == "PASS" else 0.5), (result.source, share)
