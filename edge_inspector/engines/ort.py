"""ONNX Runtime engine: the default everywhere, and the reference other engines are checked against.

The manifest is checked against the graph when the engine opens, so a bundle whose graph does not match what the
manifest promises (input name, size, dtype, output names, opset) is refused with a message instead of producing
nonsense on the line.
"""

from __future__ import annotations

import logging
import os
from typing import NamedTuple

import numpy as np
import onnx
import onnxruntime as ort

from edge_inspector.bundle.store import Bundle
from edge_inspector.config import EngineSettings
from edge_inspector.engines.base import EngineOutput, warmup_image
from edge_inspector.engines.cpu_features import full_range_exact
from edge_inspector.engines.ort_rewrites import default_opset, ort_disabled_optimizers, prepare_for_onnxruntime
from edge_inspector.errors import BundleError, EngineError
from edge_inspector.log import kv

log = logging.getLogger(__name__)

_OPTIMIZATION = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


def _read_graph(path: os.PathLike) -> onnx.ModelProto:
    """The bundle's graph; BundleError when the file is not a readable ONNX model."""
    try:
        return onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # onnx raises DecodeError, OSError, ... for a damaged file
        raise BundleError(f"{path} is corrupt: not a readable ONNX model ({exc})") from exc


def session_options(settings: EngineSettings) -> ort.SessionOptions:
    """ONNX Runtime session options for ``settings``: threads, optimisation level, and what idle pool threads do."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = settings.intra_op_threads
    options.inter_op_num_threads = settings.inter_op_threads
    options.graph_optimization_level = _OPTIMIZATION[settings.graph_optimization]
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3  # ORT's own warnings would bypass our structured logs
    # Idle pool threads sleep unless asked to spin: on an edge box they share the cores with capture and decision.
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if settings.spin_wait else "0")
    if settings.spin_wait:
        # Spin between operators, but not after a run: an idle session's spinning threads took the cores from the
        # next session's run (three interleaved 2-thread sessions: FP32 8.9 -> 29.7 ms) and from torch in the same
        # process, as they would from capture and decision between frames.
        options.add_session_config_entry("session.force_spinning_stop", "1")
    return options


class LoadedSession(NamedTuple):
    session: ort.InferenceSession
    load_rewrites: dict[str, int]
    """What ``ort_rewrites.prepare_for_onnxruntime`` rewrote, by kind."""


def load_session(
    graph: onnx.ModelProto,
    settings: EngineSettings | None = None,
    providers: list[str] | None = None,
    path: os.PathLike | str | None = None,
    profile_prefix: str | None = None,
    optimized_path: str | None = None,
) -> LoadedSession:
    """An ONNX Runtime session for ``graph`` as the line runs it: the one place sessions are made (the line's engine,
    export parity, calibrate and the benchmarks open theirs here, so what they measure is what the line runs).

    A copy of ``graph`` gets the load rewrites (``ort_rewrites.prepare_for_onnxruntime``: INT4 weights widened to INT8
    containers, integer MatMuls as ``MatMulInteger``, weight-only blocks folded); the optimizers its metadata names
    are left out.

    Args:
        graph: the ONNX graph; left as it is (the caller's copy stays small).
        settings: threads, optimisation level, spin-wait; default ``EngineSettings()``, the line's defaults.
        providers: ONNX Runtime execution providers, best first; default CPU only.
        path: the file ``graph`` was read from, loaded directly when no rewrite applies; named in errors.
        profile_prefix: turn ONNX Runtime's profiler on, writing its trace there (``engines.ort_profile``).
        optimized_path: write the graph as ONNX Runtime runs it, after its optimizers, there (``engines.memory``).

    Raises:
        BundleError: ONNX Runtime refuses the graph.
    """
    settings = settings or EngineSettings()
    rewritten = onnx.ModelProto()
    rewritten.CopyFrom(graph)
    # 4-bit weights are stored as INT4 (small file) and run as INT8 integer kernels (fast): same codes;
    # weight-only INT8 blocks are dequantized once here instead of on every image
    rewrites = prepare_for_onnxruntime(rewritten)
    source = str(path) if path is not None and not any(rewrites.values()) else rewritten.SerializeToString()
    options = session_options(settings)
    if profile_prefix is not None:
        options.enable_profiling, options.profile_file_prefix = True, profile_prefix
    if optimized_path is not None:
        options.optimized_model_filepath = optimized_path
    try:
        session = ort.InferenceSession(source, options,
                                       providers=providers or ["CPUExecutionProvider"],
                                       disabled_optimizers=ort_disabled_optimizers(graph))
    except Exception as exc:  # ORT raises its own Fail/InvalidGraph/... types
        raise BundleError(f"ONNX Runtime cannot load {path or 'the graph'}: {exc}") from exc
    return LoadedSession(session, rewrites)


def _check_weight_range(bundle: Bundle, providers: list[str]) -> None:
    """Refuse full-range 8-bit weights on an x86 CPU whose integer kernels would saturate them (no VNNI): the line
    would run a model whose outputs are off by up to tens of quantization steps."""
    quant = bundle.manifest.quantization
    if quant.precision != "qdq" or quant.weight_codes <= 63 or providers[0] != "CPUExecutionProvider":
        return
    exact = full_range_exact()
    if exact is False:
        raise BundleError(
            f"{bundle.path} was calibrated with 8-bit weight codes up to {quant.weight_codes} "
            f"({quant.weight_codes_reason or 'no reason recorded'}), which this CPU's ONNX Runtime kernels saturate "
            "(no VNNI): recalibrate for this line with 'edge-inspector calibrate --weight-range reduced'")
    if exact is None:
        log.warning("full-range 8-bit weights on a CPU architecture whose ONNX Runtime kernels were not checked for "
                    "saturation", extra=kv(model=bundle.manifest.model_id, weight_codes=quant.weight_codes))


class OrtEngine:
    """Runs a bundle's graph with ONNX Runtime.

    Args:
        bundle: an opened bundle (``bundle.store.load_bundle``).
        settings: threads and graph optimisation level.
        providers: ONNX Runtime execution providers, best first; default CPU only (the embedded default).

    Raises:
        BundleError: the graph is unreadable or does not match the manifest.
    """

    name = "onnxruntime"

    def __init__(self, bundle: Bundle, settings: EngineSettings | None = None, providers: list[str] | None = None):
        self.bundle = bundle
        self.settings = settings or EngineSettings()
        manifest = bundle.manifest
        graph = _read_graph(bundle.onnx_path)
        opset = default_opset(graph, bundle.onnx_path)
        if opset != manifest.graph.opset:
            raise BundleError(
                f"{bundle.onnx_path} uses opset {opset} but the manifest says {manifest.graph.opset}: "
                "re-export the bundle"
            )
        self.providers = providers or ["CPUExecutionProvider"]
        _check_weight_range(bundle, self.providers)
        loaded = load_session(graph, self.settings, self.providers, path=bundle.onnx_path)
        self.session, self.load_rewrites = loaded.session, loaded.load_rewrites
        self._check_contract()
        self._input_name = manifest.input.name
        self._outputs = [manifest.outputs.anomaly_map, manifest.outputs.score]
        self._shape = (manifest.input.height, manifest.input.width, 3)
        log.info("onnxruntime engine ready", extra=kv(model=manifest.model_id, **self.describe()))

    def _check_contract(self) -> None:
        spec = self.bundle.manifest
        where = str(self.bundle.onnx_path)
        inputs = self.session.get_inputs()
        if len(inputs) != 1 or inputs[0].name != spec.input.name:
            names = [i.name for i in inputs]
            raise BundleError(
                f"{where}: graph inputs {names} do not match the manifest's single input '{spec.input.name}'")
        given = inputs[0]
        if given.type != "tensor(uint8)":
            raise BundleError(f"{where}: input '{given.name}' is {given.type}, the manifest says uint8")
        expected = [1, spec.input.height, spec.input.width, 3]
        shape = list(given.shape)
        fixed_ok = len(shape) == 4 and all(
            not isinstance(dim, int) or dim == want for dim, want in zip(shape, expected)
        )
        if not fixed_ok or any(not isinstance(dim, int) for dim in shape[1:]):
            raise BundleError(f"{where}: input shape {shape} does not match the manifest's NHWC {expected}")
        outputs = {o.name for o in self.session.get_outputs()}
        missing = [n for n in (spec.outputs.anomaly_map, spec.outputs.score) if n not in outputs]
        if missing:
            raise BundleError(
                f"{where}: graph lacks output(s) {missing} named in the manifest (it has {sorted(outputs)})")

    def warmup(self, runs: int = 2) -> None:
        image = warmup_image(self.bundle, self._shape)
        for _ in range(runs):
            self.infer(image)

    def infer(self, image: np.ndarray) -> EngineOutput:
        if self.session is None:
            raise EngineError("the engine is closed")
        if image.shape != self._shape or image.dtype != np.uint8:
            raise EngineError(f"engine input must be uint8 {self._shape}, got {image.dtype} {image.shape}")
        try:
            anomaly_map, score = self.session.run(self._outputs, {self._input_name: image[np.newaxis]})
        except Exception as exc:
            raise EngineError(f"ONNX Runtime inference failed: {exc}") from exc
        if anomaly_map.shape != (1, 1, *self._shape[:2]) or score.size != 1:
            raise EngineError(
                f"graph returned anomaly map {anomaly_map.shape} and score {score.shape}; "
                f"expected (1, 1, {self._shape[0]}, {self._shape[1]}) and (1,)"
            )
        return EngineOutput(anomaly_map[0, 0], float(score.reshape(-1)[0]))

    def describe(self) -> dict[str, str]:
        return {
            "backend": self.name,
            "version": ort.__version__,
            "device": "cpu" if self.session.get_providers() == ["CPUExecutionProvider"] else "gpu",
            "providers": ",".join(self.session.get_providers()),
            "intra_op_threads": str(self.settings.intra_op_threads or os.cpu_count()),
            "graph_optimization": self.settings.graph_optimization,
            "spin_wait": str(self.settings.spin_wait).lower(),
            "int4_weights_widened": str(self.load_rewrites["int4_widened"]),
            "integer_matmuls": str(self.load_rewrites["integer_matmuls"]),
            "blocked_weights_folded": str(self.load_rewrites["blocked_dq_folded"]),
        }

    def close(self) -> None:
        # The session frees its memory when dropped; a late infer() then fails with a clear EngineError.
        self.session = None  # type: ignore[assignment]
