"""deploy/compose.yaml and what it mounts, checked without Docker (which cannot run here):

- compose.yaml follows the Compose Specification's schema;
- every file the stack mounts or builds from exists (the generated secrets: as make-secrets.sh makes them), the
  station lists of compose, the secrets command, trigger-sim and Prometheus agree, and every shell command parses;
- Prometheus's config and every dashboard query parse with promtool;
- a station runs the stack's own line configuration against the shipped broker configuration with its own account,
  is triggered by the operator, and its /metrics serves every metric the Grafana dashboard queries, so renaming a
  metric in edge_inspector/ops/metrics.py fails here.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import subprocess
import sys
import threading
import urllib.request

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from edge_inspector.cli.run import run_line
from edge_inspector.config import load_run_config
from edge_inspector.publish.broker import Topics
from tests.fixtures.broker import free_port
from tests.fixtures.plant_broker import DEPLOY, make_secrets, plant_broker, read_env_file  # noqa: F401

COMPOSE = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
SERVICES = COMPOSE["services"]
STACK_LINE = DEPLOY / "examples" / "compose-line.yaml"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "edge-inspector.json"
GENERATED = "mosquitto/generated"
METRIC_NAME = re.compile(r"\b(edge_inspector_[a-z0-9_]+|process_[a-z0-9_]+|up)\b(?=\s*[{\[)]|\s*$)")


def stations() -> list[str]:
    return [name for name, service in SERVICES.items() if "STATION" in service.get("environment", {})]


def shell_commands() -> dict[str, str]:
    """Each service's shell command as the container's shell sees it (compose turns $$ into $)."""
    commands = {}
    for name, service in SERVICES.items():
        command = service.get("command") or []
        if service.get("entrypoint") == ["/bin/sh", "-c"] or command[:2] == ["/bin/sh", "-c"]:
            commands[name] = command[-1].replace("$$", "$")
    return commands


def dashboard_queries() -> list[str]:
    doc = json.loads(DASHBOARD.read_text())
    return [target["expr"] for panel in doc["panels"] for target in panel.get("targets", [])]


def test_compose_file_follows_the_compose_specification():
    """Docker cannot run here; the Compose Specification's JSON schema (vendored by check-jsonschema) catches
    misspelt keys and wrong types the way `docker compose config` would."""
    if importlib.util.find_spec("check_jsonschema") is None:
        pytest.skip("check-jsonschema not installed (pip install -e '.[dev]'); compose.yaml not schema-checked")
    checked = subprocess.run([sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.compose-spec",
                              str(DEPLOY / "compose.yaml")], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_every_mounted_file_exists_and_the_station_lists_agree(tmp_path):
    names = stations()
    assert len(names) >= 2 and all(SERVICES[n]["environment"]["STATION"] == n for n in names)
    secrets_command = shell_commands()["secrets"]
    generated = tmp_path / "generated"
    make_secrets(generated, tuple(names))
    assert f"make-secrets.sh --out /generated {' '.join(names)} " in secrets_command

    for name, service in SERVICES.items():
        build = service.get("build", {})
        if "dockerfile" in build:
            assert (DEPLOY / build["context"] / build["dockerfile"]).is_file(), f"{name}: no {build['dockerfile']}"
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if not source.startswith("./"):
                assert source in COMPOSE["volumes"], f"{name}: undeclared volume {source}"
                continue
            relative = source[2:]
            if relative.startswith(GENERATED):
                made = generated / relative[len(GENERATED):].lstrip("/")
                assert made.exists(), f"{name} mounts {source}, which make-secrets.sh does not make"
                if relative.endswith("/env"):  # stations source <station>.env from here
                    assert all((made / f"{station}.env").is_file() for station in names)
            else:
                assert (DEPLOY / relative).exists(), f"{name} mounts {source}, which is not in the repository"

    line = load_run_config(STACK_LINE)
    assert line.http.host == "0.0.0.0", "inside a container Prometheus reaches /metrics only on 0.0.0.0"
    for station in names:
        assert any(port.endswith(f":{line.http.port}") for port in SERVICES[station]["ports"])
    assert SERVICES["trigger-sim"]["environment"]["STATIONS"].split() == names
    prometheus = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    targets = {(group["targets"][0], group["labels"]["station"])
               for job in prometheus["scrape_configs"] for group in job["static_configs"]}
    assert targets == {(f"{station}:{line.http.port}", station) for station in names}


def test_every_shell_command_in_the_stack_parses():
    commands = shell_commands()
    assert {"secrets", "trigger-sim", "plc-consumer", *stations()} <= set(commands)
    for name, script in commands.items():
        checked = subprocess.run(["sh", "-n", "-c", script], capture_output=True, text=True)
        assert checked.returncode == 0, f"{name}: {checked.stderr}"


def test_prometheus_config_and_every_dashboard_query_parse(tmp_path):
    if shutil.which("promtool") is None:
        pytest.skip("promtool not installed (Debian: apt-get install prometheus); Prometheus files not checked")
    config = subprocess.run(["promtool", "check", "config", str(DEPLOY / "prometheus" / "prometheus.yml")],
                            capture_output=True, text=True)
    assert config.returncode == 0, config.stdout + config.stderr
    # promtool parses PromQL in recording rules: one rule per query, Grafana's variables given plain values.
    rules = [{"record": f"dashboard:query_{i}",
              "expr": q.replace("$__rate_interval", "1m").replace("$__range", "1h").replace("$station", ".*")}
             for i, q in enumerate(dashboard_queries())]
    rules_file = tmp_path / "dashboard-rules.yml"
    rules_file.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    checked = subprocess.run(["promtool", "check", "rules", str(rules_file)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_a_stack_station_serves_every_metric_the_dashboard_queries(plant_broker, tmp_path, monkeypatch):
    for key, value in read_env_file(plant_broker.env_dir / "station-1.env").items():
        monkeypatch.setenv(key, value)  # what the station's entrypoint sources from its env file
    port = free_port()
    config = load_run_config(STACK_LINE, [
        "station=station-1", "model=demo", "capture.max_frames=3",
        f"mqtt.url={plant_broker.url}", f"mqtt.tls.ca_file={plant_broker.ca_file}",
        f"mqtt.spool_dir={tmp_path / 'spool'}", f"archive.dir={tmp_path / 'archive'}", f"http.port={port}",
    ])
    topics = Topics.for_station(config.mqtt.topic_prefix, "station-1")
    plc = plant_broker.connect("plc", topics=(f"{config.mqtt.topic_prefix}/#",))
    operator = plant_broker.connect("operator")
    line = threading.Thread(target=run_line, args=(config,), kwargs={"quiet": True}, daemon=True)
    line.start()
    try:
        assert plc.wait_for(lambda c: any(b'"online"' in p for p in c.on(topics.status)), 30), "station not online"
        for part in ("A-1", "A-2"):
            operator.publish(topics.cmd, json.dumps({"kind": "trigger", "part_id": part}))
        assert plc.wait_for(lambda c: len(c.on(topics.result)) == 2, 30), "triggered results did not arrive"
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
            exposition = response.read().decode()
        operator.publish(topics.cmd, json.dumps({"kind": "trigger", "part_id": "A-3"}))
        line.join(timeout=30)
        assert not line.is_alive()
    finally:
        plc.close()
        operator.close()
    assert [json.loads(p)["part_id"] for p in plc.on(topics.result)] == ["A-1", "A-2", "A-3"]

    served = {sample.name for family in text_string_to_metric_families(exposition) for sample in family.samples}
    queried = {name for query in dashboard_queries() for name in METRIC_NAME.findall(query)}
    assert len(queried) >= 10, f"the metric-name pattern no longer finds the dashboard's metrics: {queried}"
    missing = queried - served - {"up"}  # 'up' is Prometheus's own series per scrape target
    assert not missing, f"the Grafana dashboard queries metrics /metrics does not serve: {sorted(missing)}"
