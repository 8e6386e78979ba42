"""Typed settings for the line, loaded from YAML, with errors that name the key and what is allowed.

Precedence: defaults < YAML file < ``key=value`` overrides < explicit CLI flags.
The compile-time presets (model + training) reuse the same machinery (``load_model``) from
``edge_inspector.model.presets``.
"""

from __future__ import annotations

import difflib
import inspect
import os
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from edge_inspector.errors import ConfigError

M = TypeVar("M", bound=BaseModel)


class StrictModel(BaseModel):
    """Base for every settings section: unknown keys are errors, assignments are validated."""

    # use_attribute_docstrings: the docstring under a field is its description (``edge-inspector init`` writes
    # them as comments into line.yaml).
    model_config = ConfigDict(extra="forbid", validate_assignment=True, use_attribute_docstrings=True)


class EngineSettings(StrictModel):
    backend: Literal["auto", "onnxruntime", "tensorrt"] = "auto"
    """auto: TensorRT when a plan matching this GPU and bundle exists, else ONNX Runtime."""
    intra_op_threads: int = Field(0, ge=0)
    """ONNX Runtime threads per operator; 0 = one per physical core."""
    inter_op_threads: int = Field(1, ge=1)
    """ONNX Runtime threads running independent operators at once (1 suits these sequential graphs)."""
    spin_wait: bool = False
    """Let ONNX Runtime's idle pool threads spin between operators instead of sleeping. Faster with more than one
    thread (``edge-inspector bench`` on 2 cores, 2 threads: HaloAE-lite 6.8 -> 5.6 ms FP32, 4.7 -> 3.7 ms HQS; no
    change at 1 thread), but the spinning threads take CPU that capture, decision and publishing on the same box would otherwise get; off by default."""
    graph_optimization: Literal["disable", "basic", "extended", "all"] = "all"
    """ONNX Runtime graph optimization level (a bundle can switch single optimizers off itself)."""
    warmup_runs: int = Field(2, ge=0)
    """Inferences run before the first part, so the first part is not slow."""
    plan: str | None = None
    """Path of a TensorRT plan; default: the newest plan in the bundle's ``plans/`` folder."""


class RoiSettings(StrictModel):
    """Region of interest in full-frame pixels, applied before the model (crop, then rotate), e.g.
    ``roi: {x: 320, y: 180, width: 640, height: 360, rotation_deg: 0}``; null = the whole frame."""

    x: int = Field(ge=0)
    y: int = Field(ge=0)
    width: int = Field(gt=0)
    height: int = Field(gt=0)
    rotation_deg: float = 0.0
    """Rotation about the ROI centre, counter-clockwise, so parts lie the way the model was trained."""


class CaptureSettings(StrictModel):
    mode: Literal["auto", "free_run", "triggered"] = "auto"
    """free_run: judge the newest frame, count drops. triggered: judge every frame/trigger, never drop.
    auto: triggered for files, folders and the demo; free_run for cameras and streams."""
    loop: bool = False
    """Loop an image folder or video file forever."""
    max_frames: int = Field(0, ge=0)
    """Stop after this many judged frames (0 = run until the source ends or a signal)."""
    queue_size: int = Field(4, ge=1)
    """Parts waiting between two stages of the loop at most."""
    reopen_backoff_s: tuple[float, float] = (0.5, 10.0)
    """(first, maximum) wait before reopening a camera that stopped delivering; doubles each try."""
    read_timeout_s: float = Field(5.0, gt=0)
    """A camera silent for this long is treated as lost and reopened."""
    width: int | None = Field(None, gt=0)
    """Frame width asked of a camera (null: the camera's default)."""
    height: int | None = Field(None, gt=0)
    """Frame height asked of a camera (null: the camera's default)."""
    fps: float | None = Field(None, gt=0)
    """Frames per second: asked of a camera; the pace at which image folders and video files are replayed
    (default: as fast as the line judges them)."""
    trigger_source: Literal["every_frame", "mqtt"] = "every_frame"
    """In triggered mode: judge every frame, or only when a software trigger arrives over MQTT."""
    max_image_pixels: int = Field(8192 * 8192, gt=0)
    """Largest image file (width x height, from its header) an image folder source decodes; a larger one is
    judged fail-safe with an error instead of taking gigabytes of memory."""


class DecisionSettings(StrictModel):
    threshold: float | None = Field(None, gt=0)
    """Raw image-score threshold; default: the one calibrated into the bundle."""
    sensitivity: float = Field(0.5, ge=0.0, le=1.0)
    """0.5 keeps the calibrated threshold; higher rejects more, lower rejects less."""
    pixel_threshold: float | None = Field(None, gt=0)
    """Raw anomaly-map threshold for defect regions; default: the bundle's."""
    min_region_area_px: int = Field(16, ge=0)
    """Defect regions smaller than this (full-frame pixels) are not reported."""
    fail_safe_verdict: Literal["FAIL", "UNKNOWN"] = "FAIL"
    """Verdict given when inference fails or times out. Never PASS."""
    inference_timeout_s: float = Field(2.0, gt=0)
    """An inference that takes longer gives the fail-safe verdict."""


class TlsSettings(StrictModel):
    """TLS for mqtts:// brokers, e.g. ``tls: {ca_file: /etc/edge-inspector/ca.crt}``; null = the system's CAs."""

    ca_file: str | None = None
    """CA certificate that signed the broker's certificate (null: the system's CAs)."""
    cert_file: str | None = None
    """Client certificate, when the broker asks for one."""
    key_file: str | None = None
    """The client certificate's private key."""
    insecure: bool = False
    """Skip the check that the broker's certificate names its host (tests only)."""


class MqttSettings(StrictModel):
    enabled: bool = True
    """Publish results to the broker (false: results are numbered but go nowhere)."""
    url: str = "mqtt://127.0.0.1:1883"
    """mqtt://host:port or mqtts://host:port (TLS)."""
    client_id: str | None = None
    """MQTT client id (null: edge-inspector-<station>)."""
    topic_prefix: str = "edge-inspector"
    """Topics: <prefix>/<station>/result, /status (retained), /heartbeat, /cmd, /cmd/response."""
    qos: Literal[0, 1, 2] = 1
    """QoS of result messages (1: at least once; consumers de-duplicate on station + sequence)."""
    keepalive_s: int = Field(30, ge=5)
    """MQTT keep-alive: the broker declares the station offline after 1.5 x this without traffic."""
    heartbeat_s: float = Field(10.0, gt=0)
    """Seconds between heartbeat messages (counters)."""
    username_env: str = "EDGE_INSPECTOR_MQTT_USERNAME"
    """Name of the environment variable holding the user name (secrets never live in the YAML)."""
    password_env: str = "EDGE_INSPECTOR_MQTT_PASSWORD"
    """Name of the environment variable holding the password."""
    command_key_env: str = "EDGE_INSPECTOR_COMMAND_KEY"
    """Name of the environment variable holding the key that commands must be signed with (unset: unsigned
    commands are accepted; deploy/MQTT.md)."""
    protocol: Literal["v5", "v3.1.1"] = "v5"
    """MQTT 5 makes the broker say why it refuses a publish (its ACL); v3.1.1 for brokers without MQTT 5."""
    tls: TlsSettings | None = None
    spool_dir: str = "spool"
    """Folder of the disk spool (one results-<station>.sqlite per station); relative to ``state_dir``."""
    spool_max_mb: float = Field(256.0, gt=0)
    """Size bound of the spool; past it the oldest PASS results are dropped, never a FAIL."""
    spool_sync: Literal["full", "normal"] = "full"
    """full: each result is on disk before publish() returns, even across a power cut (one fsync per result).
    normal: survives a crash or kill of edge-inspector, but a power cut can lose the latest results; far faster
    on slow flash storage."""
    include_mask: bool = False
    """Attach the defect mask as base64 PNG to FAIL results (bigger messages)."""

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        if not value.startswith(("mqtt://", "mqtts://", "tcp://", "ssl://")):
            raise ValueError("must start with mqtt:// or mqtts://, e.g. mqtt://127.0.0.1:1883")
        return value


class ArchiveSettings(StrictModel):
    enabled: bool = True
    """Keep FAIL frames (original, overlay, JSON) and a sample of PASS frames on disk."""
    dir: str = "archive"
    """Folder of the frame archive; relative to ``state_dir``."""
    max_mb: float = Field(2048.0, gt=0)
    """Disk cap of the archive; the oldest PASS frames go first."""
    pass_sample_rate: float = Field(0.01, ge=0.0, le=1.0)
    """Fraction of PASS frames kept; every FAIL is kept until the cap, oldest PASS deleted first."""
    min_free_mb: float = Field(100.0, ge=0)
    """Free space the archive leaves on its file system (the spool and logs may share it): it deletes old frames
    (PASS first) to keep it, and never fills the disk."""


class HttpSettings(StrictModel):
    port: int = Field(0, ge=0, le=65535)
    """The web dashboard (/) and /metrics, /healthz, /readyz, /preview.jpg on this port; 0 = off."""
    host: str = "127.0.0.1"
    """Address to listen on: 127.0.0.1 = this machine only; 0.0.0.0 = every interface (containers, a plant
    network; the read-only pages then have no authentication)."""
    token_env: str = "EDGE_INSPECTOR_HTTP_TOKEN"
    """Name of the environment variable holding the token the dashboard's write actions (threshold, sensitivity,
    pause, resume) need; without that variable the dashboard is read-only."""


class LoggingSettings(StrictModel):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "WARNING"
    """Least important log records written (to stderr). -v / -vv on the command line win over it."""
    json_lines: bool = False
    """One JSON object per log line (for a log collector); --log-json on the command line sets it too."""


class RunConfig(StrictModel):
    """Everything ``edge-inspector run`` needs. Every key can be set in YAML or as ``section.key=value``."""

    station: str = "station-1"
    """Station name: part of every MQTT topic and part id."""
    model: str | None = None
    """Model bundle folder (required; 'demo' is the bundled demo model, for ``edge-inspector demo``)."""
    source: str | None = None
    """Camera index (0), video file, rtsp:// URL or image folder (required; 'demo' is the synthetic demo line)."""
    state_dir: str | None = None
    """Where relative spool and archive folders go. Default: $STATE_DIRECTORY (set by systemd's StateDirectory=,
    e.g. /var/lib/edge-inspector), else $XDG_STATE_HOME/edge-inspector, else ~/.local/state/edge-inspector."""
    show: bool = False
    """Open a local preview window (needs a display)."""
    engine: EngineSettings = EngineSettings()
    capture: CaptureSettings = CaptureSettings()
    roi: RoiSettings | None = None
    decision: DecisionSettings = DecisionSettings()
    mqtt: MqttSettings = MqttSettings()
    archive: ArchiveSettings = ArchiveSettings()
    http: HttpSettings = HttpSettings()
    logging: LoggingSettings = LoggingSettings()


# --------------------------------------------------------------------------------------------- loading


def did_you_mean(word: str, options: list[str] | tuple[str, ...]) -> str:
    """`` Did you mean 'x'?`` for the closest of ``options``, or an empty string when none is close."""
    close = difflib.get_close_matches(word, list(options), n=1, cutoff=0.6)
    return f" Did you mean '{close[0]}'?" if close else ""


def _model_at(model_cls: type[BaseModel], loc: tuple) -> type[BaseModel] | None:
    """The pydantic model class that owns the key at ``loc`` (for listing the allowed keys)."""
    current: Any = model_cls
    for part in loc[:-1]:
        if not (isinstance(current, type) and issubclass(current, BaseModel)):
            return None
        field = current.model_fields.get(str(part))
        if field is None:
            return None
        annotation = field.annotation
        args = getattr(annotation, "__args__", ())
        candidates = [annotation, *args]
        current = next(
            (c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None
        )
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


def format_validation_error(error: ValidationError, model_cls: type[BaseModel], origin: str) -> str:
    """One line per problem: the dotted key, what was given, and what is allowed."""
    lines = [f"Invalid configuration ({origin}):"]
    for item in error.errors():
        loc = tuple(p for p in item["loc"] if not isinstance(p, int) or True)
        key = ".".join(str(p) for p in loc)
        if item["type"] == "extra_forbidden":
            owner = _model_at(model_cls, loc)
            allowed = sorted(owner.model_fields) if owner else []
            hint = did_you_mean(str(loc[-1]), allowed)
            lines.append(f"  {key}: unknown key.{hint} Allowed here: {', '.join(allowed)}")
        else:
            given = item.get("input")
            # A whole-section check (model validator) already names the values; echoing the section is noise.
            got = "" if isinstance(given, dict) else f" (got {given!r})"
            lines.append(f"  {key}: {item['msg']}{got}")
    return "\n".join(lines)


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """Turn ``["mqtt.url=mqtt://h:1883", "decision.sensitivity=0.7"]`` into a nested dict.

    Values are parsed as YAML scalars (numbers, booleans, null, lists), never evaluated as code;
    pydantic then converts them to each field's type.
    """
    nested: dict[str, Any] = {}
    for pair in pairs:
        if "=" not in pair:
            raise ConfigError(f"Override '{pair}' is not key=value (e.g. decision.sensitivity=0.6)")
        key, raw = pair.split("=", 1)
        value = yaml.safe_load(raw) if raw != "" else ""
        target = nested
        parts = key.strip().split(".")
        for part in parts[:-1]:
            target = target.setdefault(part, {})
            if not isinstance(target, dict):
                raise ConfigError(f"Override '{pair}' conflicts with another override of '{part}'")
        target[parts[-1]] = value
    return nested


def deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        siblings = [p.name for p in path.parent.glob("*.y*ml")] if path.parent.is_dir() else []
        hint = did_you_mean(path.name, siblings)
        raise ConfigError(f"Config file not found: {path}{hint}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"Config file {path} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"Config file {path} must hold a mapping at the top level, not {type(data).__name__}")
    return data


def load_model(model_cls: type[M], data: dict[str, Any], origin: str) -> M:
    """Validate ``data`` into ``model_cls``, turning pydantic's errors into a ConfigError that names keys."""
    try:
        return model_cls.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, model_cls, origin)) from None


def load_run_config(
    path: str | Path | None = None,
    overrides: list[str] | None = None,
    explicit: dict[str, Any] | None = None,
) -> RunConfig:
    """Defaults < YAML file < key=value overrides < explicit (CLI flag) values."""
    data: dict[str, Any] = read_yaml(path) if path else {}
    data = deep_merge(data, parse_overrides(overrides or []))
    data = deep_merge(data, explicit or {})
    origin = str(path) if path else "defaults and command line"
    return with_state_paths(load_model(RunConfig, data, origin))


def default_state_dir() -> Path:
    """$STATE_DIRECTORY (systemd), else $XDG_STATE_HOME/edge-inspector, else ~/.local/state/edge-inspector."""
    systemd = os.environ.get("STATE_DIRECTORY")
    if systemd:
        return Path(systemd.split(":")[0])  # systemd lists one folder per StateDirectory= entry
    xdg = os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state"
    return Path(xdg) / "edge-inspector"


def with_state_paths(config: RunConfig) -> RunConfig:
    """``config`` with ``state_dir`` filled in and relative spool and archive folders placed under it, so a line
    never writes into whatever folder it was started from."""
    state = Path(config.state_dir).expanduser() if config.state_dir else default_state_dir()

    def under_state(folder: str) -> str:
        path = Path(folder).expanduser()
        return str(path if path.is_absolute() else state / path)

    return config.model_copy(update={
        "state_dir": str(state),
        "mqtt": config.mqtt.model_copy(update={"spool_dir": under_state(config.mqtt.spool_dir)}),
        "archive": config.archive.model_copy(update={"dir": under_state(config.archive.dir)}),
    })


def dump_defaults() -> str:
    """The default line configuration as YAML (``edge-inspector config --defaults``)."""
    return yaml.safe_dump(RunConfig().model_dump(mode="json"), sort_keys=False)


def _comment(text: str | None, indent: str) -> list[str]:
    return [f"{indent}# {line}".rstrip() for line in (text or "").splitlines()]


def _section_doc(annotation: Any) -> str | None:
    """The docstring of the settings class a field holds (``RoiSettings | None`` included)."""
    for candidate in (annotation, *getattr(annotation, "__args__", ())):
        if isinstance(candidate, type) and issubclass(candidate, StrictModel) and candidate.__doc__:
            return inspect.cleandoc(candidate.__doc__)
    return None


def commented_yaml(model: BaseModel, indent: str = "") -> str:
    """``model`` as YAML with each field's description as a comment above it (``edge-inspector init``)."""
    lines: list[str] = []
    for name, info in type(model).model_fields.items():
        value = getattr(model, name)
        if isinstance(value, BaseModel):
            lines += _comment(info.description or _section_doc(info.annotation), indent)
            lines += [f"{indent}{name}:", commented_yaml(value, indent + "  ").rstrip("\n")]
            continue
        lines += _comment(info.description or _section_doc(info.annotation), indent)
        dumped = yaml.safe_dump({name: _plain(value)}, default_flow_style=True, width=1000).strip()
        lines.append(f"{indent}{dumped[1:-1]}")  # '{key: value}' -> 'key: value'
    return "\n".join(lines) + "\n"


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value
