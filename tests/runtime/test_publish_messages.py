"""The result message schema and the command parser: pure functions, no broker."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge_inspector.publish.commands import Command, CommandError, parse_command, response
from edge_inspector.publish.schema import ResultMessage, build_message
from edge_inspector.results import Verdict
from tests.fixtures.inspection_results import assert_message_matches, make_result

MQTT_DOC = Path(__file__).resolve().parents[2] / "deploy" / "MQTT.md"


@pytest.mark.parametrize("verdict", list(Verdict))
def test_message_carries_every_field(verdict):
    result = make_result(7, verdict)
    result.sequence = 41
    doc = json.loads(build_message(result, "station-9").to_json())
    assert_message_matches(doc, result, "station-9")
    assert "mask_png_base64" not in doc


def test_mask_is_attached_as_png_only_when_asked_and_not_for_pass():
    fail = make_result(3, Verdict.FAIL, with_images=True)
    fail.sequence = 1
    doc = json.loads(build_message(fail, "s", include_mask=True).to_json())
    png = np.frombuffer(base64.b64decode(doc["mask_png_base64"]), np.uint8)
    np.testing.assert_array_equal(cv2.imdecode(png, cv2.IMREAD_UNCHANGED), fail.mask)
    assert "mask_png_base64" not in json.loads(build_message(fail, "s", include_mask=False).to_json())
    passed = make_result(4, Verdict.PASS, with_images=True)
    passed.sequence = 2
    assert "mask_png_base64" not in json.loads(build_message(passed, "s", include_mask=True).to_json())


def test_schema_rejects_unknown_and_missing_fields():
    result = make_result(1, Verdict.FAIL)
    result.sequence = 1
    doc = json.loads(build_message(result, "s").to_json())
    with pytest.raises(ValueError, match="extra"):
        ResultMessage.model_validate({**doc, "surprise": 1})
    del doc["verdict"]
    with pytest.raises(ValueError, match="verdict"):
        ResultMessage.model_validate(doc)


def test_every_schema_field_is_documented():
    text = MQTT_DOC.read_text()
    for name in ResultMessage.model_json_schema()["properties"]:
        assert f"`{name}`" in text, f"field {name} missing from deploy/MQTT.md"


@pytest.mark.parametrize(
    "payload, expected",
    [
        (b'{"kind": "set_threshold", "value": 0.42}', Command("set_threshold", value=0.42)),
        (b'{"kind": "set_threshold", "value": 3, "id": "r1"}', Command("set_threshold", value=3.0, request_id="r1")),
        (b'{"kind": "set_sensitivity", "value": 0}', Command("set_sensitivity", value=0.0)),
        (b'{"kind": "set_sensitivity", "value": 1.0}', Command("set_sensitivity", value=1.0)),
        (b'{"kind": "pause"}', Command("pause")),
        (b'{"kind": "resume", "id": "x"}', Command("resume", request_id="x")),
        (b'{"kind": "trigger", "part_id": "A-17"}', Command("trigger", part_id="A-17")),
    ],
)
def test_valid_commands(payload, expected):
    assert parse_command(payload) == expected


@pytest.mark.parametrize(
    "payload, message",
    [
        (b"{not json", "malformed JSON"),
        (b"\xff\xfe", "malformed JSON"),
        (b"[1, 2]", "must be a JSON object"),
        (b'{"value": 1}', "missing 'kind'"),
        (b'{"kind": "set_treshold", "value": 1}', "Did you mean 'set_threshold'"),
        (b'{"kind": "reboot"}', "unknown kind 'reboot'"),
        (b'{"kind": "set_threshold", "value": 0}', "must be > 0"),
        (b'{"kind": "set_threshold", "value": -1}', "must be > 0"),
        (b'{"kind": "set_threshold", "value": "0.4"}', "finite number"),
        (b'{"kind": "set_threshold", "value": true}', "finite number"),
        (b'{"kind": "set_threshold", "value": NaN}', "finite number"),
        (b'{"kind": "set_threshold", "value": 1e999}', "finite number"),
        (b'{"kind": "set_threshold", "value": 1' + b"0" * 400 + b"}", "finite number"),
        (b'{"kind": "set_threshold"}', "finite number"),
        (b'{"kind": "set_sensitivity", "value": 1.5}', "within [0, 1]"),
        (b'{"kind": "trigger"}', "'part_id' must be a non-empty string"),
        (b'{"kind": "trigger", "part_id": "  "}', "'part_id' must be a non-empty string"),
        (b'{"kind": "trigger", "part_id": 17}', "'part_id' must be a non-empty string"),
        (b'{"kind": "pause", "value": 1}', "unknown key(s) value"),
        (b'{"kind": "pause", "id": 5}', "'id' must be a string"),
    ],
)
def test_invalid_commands_say_why(payload, message):
    with pytest.raises(CommandError) as info:
        parse_command(payload)
    assert message in str(info.value)


def test_error_keeps_request_id_and_kind_for_the_response():
    with pytest.raises(CommandError) as info:
        parse_command(b'{"kind": "set_sensitivity", "value": 2, "id": "req-5"}')
    assert (info.value.request_id, info.value.kind) == ("req-5", "set_sensitivity")
    doc = json.loads(response(info.value.request_id, info.value.kind, False, str(info.value)))
    assert doc == {"id": "req-5", "kind": "set_sensitivity", "ok": False, "error": str(info.value)}


def test_only_the_mqtt_module_loads_paho():
    code = (
        "import sys\n"
        "import edge_inspector.publish.archive, edge_inspector.publish.broker, edge_inspector.publish.commands\n"
        "import edge_inspector.publish.schema, edge_inspector.publish.spool\n"
        "before = 'paho' in sys.modules\n"
        "import edge_inspector.publish.mqtt\n"
        "print(before, 'paho' in sys.modules, 'torch' in sys.modules)\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert run.stdout.split() == ["False", "True", "False"], run.stderr
