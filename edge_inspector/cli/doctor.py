"""``edge-inspector doctor --config line.yaml``: check what a line needs before running it.

One line per check, ``ok``, ``warn`` or ``FAIL`` with what was found: the model bundle (hash-checked, one inference
through the engine the line would pick), the GPU (``engines.gpu_report``: driver, CUDA, TensorRT, pycuda, and
whether the bundle's TensorRT plans fit), the
source (opens, delivers a frame that fits the ROI), the MQTT broker (connects with the configured credentials and
TLS) and the disk (state folder writable, room for the spool and archive caps). Exit code 1 when a check failed.
"""

from __future__ import annotations

import argparse
import shutil
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from edge_inspector.cli import EXIT_FAILED, EXIT_OK, log_settings
from edge_inspector.cli.run import explicit_flags
from edge_inspector.config import RunConfig, load_run_config

BROKER_TIMEOUT_S = 5.0


@dataclass
class Check:
    name: str
    status: str  # "ok", "warn", "FAIL"
    detail: str


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="line configuration YAML")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--camera", type=int, metavar="N", help="camera index for OpenCV")
    where.add_argument("--source", help="video file, rtsp:// URL or image folder")
    parser.add_argument("--model", help="model bundle folder")
    parser.add_argument("--mqtt", metavar="URL", help="MQTT broker URL")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="any configuration key")


def check_model(config: RunConfig) -> list[Check]:
    """The bundle loads (hashes match) and the engine the line would pick opens and judges one image."""
    from edge_inspector.bundle.store import load_bundle
    from edge_inspector.engines.base import warmup_image
    from edge_inspector.engines.select import open_engine
    from edge_inspector.pipeline.line import resolve_model

    bundle = load_bundle(resolve_model(config.model))
    manifest = bundle.manifest
    engine = open_engine(bundle, config.engine.model_copy(update={"warmup_runs": 0}))
    try:
        output = engine.infer(warmup_image(bundle, (manifest.input.height, manifest.input.width, 3)))
    finally:
        engine.close()
    model = Check("model", "ok", f"{bundle.path}: {manifest.model_id}, {manifest.input.width}x{manifest.input.height}"
                  f", threshold {manifest.thresholds.image:.4g}; {engine.name} judged a test image "
                  f"(score {float(output.score):.4g})")
    return [model]


def check_gpu(config: RunConfig) -> list[Check]:
    """The GPU report's lines (``engines.gpu_report``); for ``backend=auto`` on a machine without a usable GPU one
    line says that the line runs on the CPU."""
    from edge_inspector.bundle.store import load_bundle
    from edge_inspector.engines.gpu_report import gpu_report
    from edge_inspector.pipeline.line import resolve_model

    if config.engine.backend == "onnxruntime":
        return []
    report = gpu_report(load_bundle(resolve_model(config.model)))
    if config.engine.backend == "auto" and report.device.gpu_name is None:
        why = report.device.gpu_problem or "no NVIDIA GPU found"
        return [Check("gpu", "ok", f"{why}: the line runs on ONNX Runtime (engine.backend=auto)")]
    # With auto, a GPU problem only costs speed (the line falls back to ONNX Runtime); with tensorrt it stops it.
    failing = "FAIL" if config.engine.backend == "tensorrt" else "warn"
    status = {"ok": "ok", "info": "ok", "warn": "warn", "fail": failing}
    return [Check(check.name, status[check.status], check.detail) for check in report.checks]


def check_source(config: RunConfig) -> list[Check]:
    """The source opens and delivers a frame, and the ROI lies inside it."""
    from edge_inspector.capture.sources import open_source
    from edge_inspector.pipeline.roi import RoiMapper

    source = open_source(config.source, config.capture)
    source.open()
    try:
        frame = source.read()
    finally:
        source.close()
    if frame is None:
        return [Check("source", "FAIL", f"{source.name} opened but delivered no frame")]
    height, width = frame.image.shape[:2]
    RoiMapper(config.roi).cut(frame.image)  # raises ConfigError when the ROI lies outside the frame
    roi = "whole frame" if config.roi is None else f"ROI {config.roi.width}x{config.roi.height} fits"
    return [Check("source", "ok", f"{source.name}: {width}x{height} frame, {roi}")]


def check_broker(config: RunConfig) -> list[Check]:
    """A real MQTT CONNECT with the line's credentials and TLS (nothing is published)."""
    import paho.mqtt.client as paho
    from paho.mqtt.enums import CallbackAPIVersion

    from edge_inspector.publish.broker import checked_tls, credentials, parse_broker_url

    if not config.mqtt.enabled:
        return [Check("broker", "warn", "mqtt.enabled is false: results go nowhere")]
    settings = config.mqtt
    address = parse_broker_url(settings.url)
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"edge-inspector-doctor-{config.station}")
    tls = checked_tls(settings.tls, address, settings.url)
    if tls is not None:
        client.tls_set(ca_certs=tls.ca_file, certfile=tls.cert_file, keyfile=tls.key_file)
        client.tls_insecure_set(tls.insecure)
    username, password = credentials(settings)
    if username:
        client.username_pw_set(username, password)
    answered, outcome = threading.Event(), {}

    def on_connect(client, userdata, flags, reason_code, properties) -> None:
        outcome["reason"] = reason_code
        answered.set()

    client.on_connect = on_connect
    try:
        client.connect(address.host, address.port, keepalive=10)
    except OSError as exc:
        return [Check("broker", "FAIL", f"{settings.url}: cannot connect: {exc}")]
    client.loop_start()
    try:
        if not answered.wait(BROKER_TIMEOUT_S):
            return [Check("broker", "FAIL", f"{settings.url}: no CONNACK within {BROKER_TIMEOUT_S:g} s")]
    finally:
        client.disconnect()
        client.loop_stop()
    reason = outcome["reason"]
    if reason.is_failure:
        return [Check("broker", "FAIL", f"{settings.url}: the broker refused the connection: {reason}")]
    user = f" as {username}" if username else " anonymously"
    return [Check("broker", "ok", f"{settings.url}: connected{user}")]


def check_disk(config: RunConfig) -> list[Check]:
    """The state folder is writable and has room for the spool and archive caps."""
    state = Path(config.state_dir)
    state.mkdir(parents=True, exist_ok=True)
    probe = state / ".doctor-write-test"
    probe.write_bytes(b"ok")
    probe.unlink()
    free_mb = shutil.disk_usage(state).free / 2**20
    needed_mb = config.mqtt.spool_max_mb + (config.archive.max_mb if config.archive.enabled else 0.0)
    status = "ok" if free_mb >= needed_mb else "warn"
    return [Check("disk", status, f"{state}: writable, {free_mb:,.0f} MB free for spool + archive caps of "
                                  f"{needed_mb:,.0f} MB")]


CHECKS: dict[str, Callable[[RunConfig], list[Check]]] = {
    "model": check_model, "gpu": check_gpu, "source": check_source, "broker": check_broker, "disk": check_disk}


def run_checks(config: RunConfig) -> list[Check]:
    """Every check; one that raises becomes a FAIL line with the error, the others still run."""
    results: list[Check] = []
    for name, check in CHECKS.items():
        try:
            results += check(config)
        except Exception as exc:  # doctor reports every problem at once instead of stopping at the first
            results.append(Check(name, "FAIL", f"{type(exc).__name__}: {exc}"))
    return results


def main(args: argparse.Namespace) -> int:
    config = load_run_config(args.config, args.overrides, explicit_flags(args))
    log_settings(args, config.logging.level, config.logging.json_lines)
    results = run_checks(config)
    for check in results:
        print(f"{check.status:4s}  {check.name:8s}  {check.detail}")
    failed = [c.name for c in results if c.status == "FAIL"]
    print(f"{len(results) - len(failed)} of {len(results)} checks passed" + (f"; failed: {', '.join(failed)}"
                                                                          if failed else ""))
    return EXIT_FAILED if failed else EXIT_OK
