"""The shipped example line configuration is accepted by the product and is a real line, not the demo."""

from __future__ import annotations

from pathlib import Path

import yaml

from edge_inspector import cli

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def checked(path: Path, capsys) -> dict:
    """``edge-inspector config --config PATH``, as the file's own header tells the user to run it."""
    code = cli.main(["config", "--config", str(path)])
    out, err = capsys.readouterr()
    assert code == 0, f"edge-inspector config refused {path.name}:\n{err}"
    return yaml.safe_load(out)


def test_line_example_validates_and_describes_a_secured_real_line(capsys):
    merged = checked(DEPLOY / "line.example.yaml", capsys)
    assert merged["source"] != "demo" and "models/demo" not in merged["model"]
    assert merged["mqtt"]["url"].startswith("mqtts://") and merged["mqtt"]["tls"]["ca_file"]
    # Credentials only by environment variable name; the YAML holds no secret.
    assert merged["mqtt"]["username_env"] and merged["mqtt"]["password_env"]
    assert merged["roi"] is not None and merged["archive"]["enabled"]
    assert merged["http"]["port"] > 0


def test_a_typo_in_the_example_would_be_caught(tmp_path, capsys):
    """The check above can fail: the same command refuses the example with one key misspelt."""
    broken = tmp_path / "line.yaml"
    broken.write_text((DEPLOY / "line.example.yaml").read_text().replace("pass_sample_rate:", "pass_sample_rat:"))
    assert cli.main(["config", "--config", str(broken)]) != 0
    assert "archive.pass_sample_rat: unknown key. Did you mean 'pass_sample_rate'?" in capsys.readouterr().err
