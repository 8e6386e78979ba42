"""The line configuration: defaults, precedence, and errors that name the key and what is allowed."""

import pytest

from edge_inspector.config import RunConfig, dump_defaults, load_run_config, parse_overrides, with_state_paths
from edge_inspector.errors import ConfigError


def test_defaults_round_trip_through_yaml(tmp_path):
    path = tmp_path / "line.yaml"
    path.write_text(dump_defaults())
    assert load_run_config(path) == with_state_paths(RunConfig())


def test_precedence_defaults_file_overrides_explicit(tmp_path):
    path = tmp_path / "line.yaml"
    path.write_text("station: s7\ndecision:\n  sensitivity: 0.6\nmqtt:\n  url: mqtt://broker:1883\n")
    config = load_run_config(
        path,
        overrides=["decision.sensitivity=0.7", "capture.loop=true"],
        explicit={"mqtt": {"url": "mqtt://flag:1884"}},
    )
    assert config.station == "s7"  # file beats default
    assert config.decision.sensitivity == 0.7  # override beats file
    assert config.capture.loop is True
    assert config.mqtt.url == "mqtt://flag:1884"  # explicit flag beats everything
    assert config.decision.fail_safe_verdict == "FAIL"  # untouched default


def test_unknown_key_suggests_the_nearest_and_lists_allowed(tmp_path):
    path = tmp_path / "line.yaml"
    path.write_text("decision:\n  sensitivty: 0.6\n")
    with pytest.raises(ConfigError) as info:
        load_run_config(path)
    message = str(info.value)
    assert "decision.sensitivty: unknown key" in message
    assert "Did you mean 'sensitivity'?" in message
    assert "fail_safe_verdict" in message and str(path) in message


@pytest.mark.parametrize(
    "override, fragment",
    [
        ("decision.sensitivity=1.5", "decision.sensitivity: Input should be less than or equal to 1"),
        ("capture.mode=sometimes", "capture.mode: Input should be 'auto', 'free_run' or 'triggered'"),
        ("mqtt.url=http://x", "mqtt.url: Value error, must start with mqtt:// or mqtts://"),
        ("decision.fail_safe_verdict=PASS", "decision.fail_safe_verdict"),
        ("engine.intra_op_threads=-1", "engine.intra_op_threads"),
    ],
)
def test_bad_values_name_key_and_allowed_values(override, fragment):
    with pytest.raises(ConfigError) as info:
        load_run_config(overrides=[override])
    assert fragment in str(info.value)


def test_overrides_are_parsed_as_yaml_scalars_never_code():
    assert parse_overrides(["a.b=3", "a.c=true", "d=__import__('os')"]) == {
        "a": {"b": 3, "c": True},
        "d": "__import__('os')",
    }
    with pytest.raises(ConfigError, match="not key=value"):
        parse_overrides(["decision.sensitivity"])


def test_config_file_errors_are_specific(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_run_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("decision: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_run_config(bad)
    listing = tmp_path / "list.yaml"
    listing.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="mapping at the top level"):
        load_run_config(listing)
