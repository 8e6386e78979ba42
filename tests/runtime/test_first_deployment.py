"""Day one on a new line: no accidental demo, typos caught, logging honoured, exit codes, paced replay.

Each test here reproduces an item of issue 16's "Seen" list and failed on the code before the fix.
"""

import json
import time

import cv2
import pytest
import yaml

from edge_inspector import __version__, cli
from edge_inspector.capture.demo_line import PartMaker
from edge_inspector.capture.sources import FolderSource
from edge_inspector.config import CaptureSettings, dump_defaults
from tests.fixtures.bundles import make_tiny_bundle

OFFLINE = ["mqtt.enabled=false", "archive.enabled=false"]


@pytest.fixture
def bundle_dir(tmp_path):
    return make_tiny_bundle(tmp_path / "bundle", 128, 128, image_threshold=0.085, pixel_threshold=0.07,
                            local=15, smooth=7).path


@pytest.fixture
def parts(tmp_path):
    maker = PartMaker(size=128, seed=9)
    folder = tmp_path / "parts"
    folder.mkdir()
    for index in range(3):
        cv2.imwrite(str(folder / f"{index}.png"), maker.make(None).image)
    return folder


# ------------------------------------------------------------------------ item 1: never the demo by accident


def test_a_generated_default_config_does_not_run_the_demo_line(tmp_path, capsys):
    config = tmp_path / "line.yaml"
    config.write_text(dump_defaults())
    code = cli.main(["run", "--config", str(config), "--max-frames", "2", *OFFLINE])
    err = capsys.readouterr().err
    assert code == 2 and "no frame source given" in err and "edge-inspector init" in err


def test_bare_command_names_what_is_missing(capsys):
    assert cli.main([]) == 2
    assert "no frame source given" in capsys.readouterr().err


def test_the_demo_source_or_model_needs_allow_demo(bundle_dir, parts, capsys):
    code = cli.main(["run", "--source", "demo", "--model", str(bundle_dir), "--max-frames", "1", *OFFLINE])
    assert code == 2 and "this is the demo setup (source: demo)" in capsys.readouterr().err
    code = cli.main(["run", "--source", str(parts), "--model", "demo", "--max-frames", "1", *OFFLINE])
    assert code == 2 and "model: demo" in capsys.readouterr().err
    code = cli.main(["run", "--source", "demo", "--model", "demo", "--allow-demo", "--max-frames", "2", "--quiet",
                     *OFFLINE])
    assert code == 0 and json.loads(capsys.readouterr().err.strip().splitlines()[-1])["judged"] == 2


def test_init_writes_a_commented_config_that_run_accepts_once_filled(tmp_path, bundle_dir, parts, capsys):
    out = tmp_path / "line.yaml"
    assert cli.main(["init", "--out", str(out), "--source", str(parts)]) == 0
    text = out.read_text()
    assert "# Camera index (0), video file, rtsp:// URL or image folder" in text  # the field docs as comments
    assert "# Frames per second" in text and "model: null" in text
    assert cli.main(["run", "--config", str(out), "--max-frames", "1", *OFFLINE]) == 2
    assert "no model bundle given" in capsys.readouterr().err
    assert cli.main(["init", "--out", str(out)]) == 2  # never overwrites silently
    data = yaml.safe_load(text)
    assert data["logging"]["level"] == "INFO" and data["source"] == str(parts)
    code = cli.main(["run", "--config", str(out), "--model", str(bundle_dir), "--quiet", "http.port=0", *OFFLINE])
    assert code == 0


# ------------------------------------------------------------------------ item 4: logging.* honoured


def test_logging_settings_from_the_config_are_honoured(bundle_dir, parts, capsys):
    code = cli.main(["run", "--source", str(parts), "--model", str(bundle_dir), "--quiet", "logging.level=INFO",
                     "logging.json_lines=true", *OFFLINE])
    err = capsys.readouterr().err.strip().splitlines()
    records = [json.loads(line) for line in err if line.startswith("{\"ts\"")]
    assert code == 0 and any(r["msg"] == "engine selected" and r["level"] == "info" for r in records)


def test_logs_stay_quiet_by_default(bundle_dir, parts, capsys):
    assert cli.main(["run", "--source", str(parts), "--model", str(bundle_dir), "--quiet", *OFFLINE]) == 0
    assert "engine selected" not in capsys.readouterr().err


# ------------------------------------------------------------------------ item 6: paced replay


def test_folder_replay_is_paced_by_capture_fps(parts):
    source = FolderSource(parts, CaptureSettings(fps=20.0, loop=True))
    source.open()
    stamps = [source.read().captured_at for _ in range(6)]
    source.close()
    # Reads start 1/20 s apart; the stamp is taken after decoding (a few ms of jitter), so the span is checked.
    # A lower bound only: a slow machine can only widen it.
    assert stamps[-1] - stamps[0] >= 5 * 0.05 - 0.02


# ------------------------------------------------------------------------ item 8: typos, help, exit codes


@pytest.mark.parametrize("word,suggestion", [("trian", "train"), ("evl", "eval"), ("dmeo", "demo")])
def test_a_mistyped_command_is_caught_with_a_suggestion(word, suggestion, capsys):
    assert cli.main([word]) == 2
    assert f"unknown command '{word}'. Did you mean '{suggestion}'?" in capsys.readouterr().err


def test_help_and_version_are_commands(capsys):
    assert cli.main(["help"]) == 0 and "doctor" in capsys.readouterr().out
    assert cli.main(["version"]) == 0 and capsys.readouterr().out.strip() == __version__
    with pytest.raises(SystemExit) as exit_:
        cli.main(["help", "run"])
    assert exit_.value.code == 0 and "--allow-demo" in capsys.readouterr().out


def test_a_mistyped_config_file_name_is_suggested(tmp_path, capsys):
    (tmp_path / "line.yaml").write_text("station: a\n")
    assert cli.main(["config", "--config", str(tmp_path / "line.yml")]) == 2
    assert "Did you mean 'line.yaml'?" in capsys.readouterr().err


def test_an_roi_outside_the_frame_fails_the_run(bundle_dir, parts, capsys):
    code = cli.main(["run", "--source", str(parts), "--model", str(bundle_dir), "--quiet", "roi.x=1000", "roi.y=0",
                     "roi.width=64", "roi.height=64", *OFFLINE])
    err = capsys.readouterr().err
    assert code == 3 and "every judged part (3) got the fail-safe verdict" in err and "outside the 128x128" in err


def test_doctor_reports_every_check_and_fails_on_a_missing_broker(bundle_dir, parts, capsys):
    code = cli.main(["doctor", "--source", str(parts), "--model", str(bundle_dir), "mqtt.url=mqtt://127.0.0.1:1"])
    out = capsys.readouterr().out
    assert code == 1
    assert {line.split()[1] for line in out.splitlines()[:-1]} == {"model", "gpu", "source", "broker", "disk"}
    assert "FAIL  broker  " in out and "ok    model   " in out and "ok    source  " in out


def test_replayed_run_takes_at_least_the_paced_time(bundle_dir, parts):
    start = time.monotonic()
    assert cli.main(["run", "--source", str(parts), "--model", str(bundle_dir), "--quiet", "capture.fps=10",
                     *OFFLINE]) == 0
    assert time.monotonic() - start >= 0.2  # 3 frames at 10 fps: two gaps of 0.1 s at least
