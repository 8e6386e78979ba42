"""Build a TensorRT plan for this GPU from a model bundle (run it on the target device: plans do not travel).

The recipe works on TensorRT 10.x (JetPack 6) and 11.x (desktop, JetPack >= 7.2.2) alike: precision lives in the
graph (Q/DQ + FP16 float parts, see ``trt_prep``), the network is strongly typed, and nothing uses calibrators or
precision builder flags (TensorRT 11 removed them). Then: ``OnnxParser`` with every parser error reported, a
workspace limit, one optimisation profile, a persistent timing cache, ``build_serialized_network``, and a plan with
its JSON side-car in ``<bundle>/plans/``. The side-car records the module the plan was built on and TensorRT's own
per-layer description of the engine (precision and tactic per layer, see ``trt_layers``): the proof that the INT8
convolutions run as INT8 kernels, with a warning when Q/DQ nodes were not fused.
"""

from __future__ import annotations

import logging
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import onnx
from tqdm import tqdm

from edge_inspector import __version__
from edge_inspector.bundle.plans import PlanSidecar, default_plan_name, gpu_slug, write_sidecar
from edge_inspector.bundle.store import Bundle, sha256_file
from edge_inspector.engines import trt_layers
from edge_inspector.engines.fp16_check import verify_prepared
from edge_inspector.engines.trt_prep import DEFAULT_FP32_OP_TYPES, PreparationReport, prepare_bundle_graph
from edge_inspector.engines.trt_run import load_tensorrt, make_logger, probe_device
from edge_inspector.errors import ConfigError, EngineError
from edge_inspector.log import kv

log = logging.getLogger(__name__)


@dataclass
class BuildOptions:
    workspace_mb: int = 1024
    """Largest scratch memory a layer may use (TensorRT's WORKSPACE pool)."""
    batch: int = 1
    """Largest batch the plan accepts; > 1 needs a graph exported with a dynamic batch. Tactics are always tuned for
    batch 1, the batch the line runs."""
    timing_cache: Path | None = None
    """Persistent timing cache; default ``<bundle>/plans/<gpu>-trt<version>.timing-cache``."""
    out: Path | None = None
    """Plan file; default ``<bundle>/plans/<gpu>-trt<version>.plan``."""
    keep_fp32_op_types: tuple[str, ...] = DEFAULT_FP32_OP_TYPES
    verify_fp16: bool = True
    """Run the FP16-prepared graph in ONNX Runtime against the original before building."""
    progress: bool = True

    def check(self) -> None:
        if self.workspace_mb < 16:
            raise ConfigError(f"--workspace-mb {self.workspace_mb} is too small: give at least 16 MiB")
        if self.batch < 1:
            raise ConfigError(f"--batch {self.batch}: the batch must be at least 1")


@dataclass
class BuildResult:
    plan_path: Path
    sidecar_path: Path
    sidecar: PlanSidecar
    preparation: PreparationReport
    fp16_check: dict = field(default_factory=dict)
    """Parity of the FP16-prepared graph against the original, both in ONNX Runtime (empty when skipped)."""
    warnings: list[str] = field(default_factory=list)
    """INT8 that did not happen (unfused Q/DQ, quantized convolutions running in FP16)."""


def _progress_monitor(trt):
    """A ``trt.IProgressMonitor`` drawing one tqdm bar per build phase (TensorRT calls it from several threads)."""

    class _Monitor(trt.IProgressMonitor):
        def __init__(self):
            trt.IProgressMonitor.__init__(self)
            self._bars: dict[str, tqdm] = {}
            self._lock = threading.Lock()

        def phase_start(self, phase_name, parent_phase, num_steps):
            with self._lock:
                self._bars[phase_name] = tqdm(total=num_steps, desc=phase_name, position=len(self._bars), leave=False)

        def step_complete(self, phase_name, step):
            with self._lock:
                bar = self._bars.get(phase_name)
                if bar is not None:
                    bar.n = step + 1
                    bar.refresh()
            return True  # False would cancel the build

        def phase_finish(self, phase_name):
            with self._lock:
                bar = self._bars.pop(phase_name, None)
                if bar is not None:
                    bar.close()

    return _Monitor()


def _profile_shapes(network, batch: int) -> dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]:
    """(min, opt, max) per network input: the batch dimension may be dynamic, nothing else may. ``opt`` is batch 1,
    the batch ``TrtEngine`` runs; ``batch`` only raises the maximum."""
    shapes = {}
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        shape = tuple(tensor.shape)
        if any(d < 0 for d in shape[1:]):
            raise ConfigError(f"input '{tensor.name}' has dynamic dimensions {shape}; only the batch may be dynamic")
        if shape[0] >= 0 and shape[0] != batch:
            raise ConfigError(
                f"input '{tensor.name}' has a fixed batch of {shape[0]}; --batch {batch} needs a graph exported "
                "with a dynamic batch dimension"
            )
        rest = shape[1:]
        shapes[tensor.name] = ((1, *rest), (1, *rest), (batch, *rest)) if shape[0] < 0 else (shape, shape, shape)
    return shapes


def _set_profile(builder, config, shapes: dict) -> None:
    profile = builder.create_optimization_profile()
    for name, (low, opt, high) in shapes.items():
        profile.set_shape(name, low, opt, high)
    if config.add_optimization_profile(profile) < 0:
        raise EngineError(f"TensorRT refused the optimisation profile {shapes} (see its log above)")


def _set_timing_cache(config, cache_path: Path) -> None:
    """Use the persistent cache at ``cache_path``; one that TensorRT refuses (another version or GPU, corrupt) is
    replaced by a fresh one with a warning, since the cache only saves build time."""
    if cache_path.is_file():
        cache = config.create_timing_cache(cache_path.read_bytes())
        if cache is not None and config.set_timing_cache(cache, ignore_mismatch=False):
            return
        log.warning("timing cache not usable here, starting a fresh one", extra=kv(cache=str(cache_path)))
    cache = config.create_timing_cache(b"")
    if cache is None or not config.set_timing_cache(cache, ignore_mismatch=False):
        raise EngineError("TensorRT could not create an empty timing cache (see its log above)")


def _inspect_engine(trt, logger, serialized) -> tuple[list[trt_layers.EngineLayer], int | None]:
    """TensorRT's per-layer description of the built engine and its activation memory in bytes."""
    runtime = trt.Runtime(logger)
    engine = runtime.deserialize_cuda_engine(serialized)
    if engine is None:
        raise EngineError("TensorRT built a plan it cannot load back: " + " | ".join(logger.errors[-3:]))
    info = engine.create_engine_inspector().get_engine_information(trt.LayerInformationFormat.JSON)
    memory = getattr(engine, "device_memory_size_v2", None)  # TensorRT >= 10.1; 11 dropped the unversioned one
    if memory is None:
        memory = getattr(engine, "device_memory_size", None)
    return trt_layers.parse_engine_information(info), memory


def _build_serialized(trt, onnx_path: Path, options: BuildOptions, cache_path: Path, timings: dict) -> tuple[bytes, dict]:
    """Parse, configure and build; returns the plan and what the side-car records about the build."""
    logger = make_logger(trt)
    builder = trt.Builder(logger)
    # TensorRT 11 is always strongly typed and ignores the flag; 10.x needs it.
    strongly_typed = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    network = builder.create_network(0 if strongly_typed is None else 1 << int(strongly_typed))
    parser = trt.OnnxParser(network, logger)
    start = time.perf_counter()
    if not parser.parse_from_file(str(onnx_path)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        for error in errors:
            print(f"TensorRT ONNX parser: {error}", file=sys.stderr)
        raise EngineError(f"TensorRT's ONNX parser rejected the graph ({len(errors)} errors):\n" + "\n".join(errors))
    timings["parse_s"] = round(time.perf_counter() - start, 3)

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, options.workspace_mb << 20)
    config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED  # per-layer precision and tactic in the inspector
    shapes = _profile_shapes(network, options.batch)
    _set_profile(builder, config, shapes)
    _set_timing_cache(config, cache_path)
    if options.progress and hasattr(trt, "IProgressMonitor"):
        config.progress_monitor = _progress_monitor(trt)

    start = time.perf_counter()
    serialized = builder.build_serialized_network(network, config)
    timings["build_s"] = round(time.perf_counter() - start, 3)
    if serialized is None:
        raise EngineError("TensorRT could not build the engine: " + " | ".join(logger.errors or ["see the log above"]))
    cache_path.parent.mkdir(parents=True, exist_ok=True)
    cache_path.write_bytes(memoryview(config.get_timing_cache().serialize()))
    layers, memory = _inspect_engine(trt, logger, serialized)
    built = {
        "profile": {name: {"min": list(s[0]), "opt": list(s[1]), "max": list(s[2])} for name, s in shapes.items()},
        "activation_memory_mb": None if memory is None else round(memory / (1 << 20), 1),
        "layers": layers,
    }
    return bytes(memoryview(serialized)), built


def build_engine(bundle: Bundle, options: BuildOptions | None = None) -> BuildResult:
    """Prepare the graph, build a strongly typed plan on this GPU, write plan + side-car.

    Raises:
        MissingDependencyError: tensorrt (or pycuda) is not installed.
        EngineError: no GPU, the FP16 graph drifts beyond the manifest's tolerance, or TensorRT fails.
        ConfigError: bad options (batch, workspace).
    """
    options = options or BuildOptions()
    options.check()
    trt = load_tensorrt()
    device = probe_device()
    if device.gpu_name is None:
        raise EngineError(f"{device.unavailable_reason()}: build-engine must run on the device that will run the plan")
    plan_path = Path(options.out or bundle.plans_dir / default_plan_name(device.gpu_name, trt.__version__))
    cache_path = Path(
        options.timing_cache or bundle.plans_dir / f"{gpu_slug(device.gpu_name)}-trt{trt.__version__}.timing-cache"
    )
    timings: dict[str, float] = {}
    fp16_check: dict = {}
    total = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="edge-inspector-build-") as scratch:
        prepared_path = Path(scratch) / "model.fp16.onnx"
        start = time.perf_counter()
        preparation = prepare_bundle_graph(bundle, prepared_path, options.keep_fp32_op_types)
        timings["prepare_s"] = round(time.perf_counter() - start, 3)
        if options.verify_fp16 and len(bundle.calibration_images()):
            start = time.perf_counter()
            report = verify_prepared(bundle, prepared_path)
            timings["verify_fp16_s"] = round(time.perf_counter() - start, 3)
            fp16_check = report.to_dict()
            log.info("fp16 graph checked in onnxruntime", extra=kv(**fp16_check))
            if not report.passed:
                raise EngineError(
                    "the FP16-prepared graph already drifts beyond the manifest tolerance in ONNX Runtime, before "
                    "TensorRT; pin the sensitive nodes FP32 (quantization.keep_fp32_nodes):\n" + report.summary()
                )
        plan_bytes, built = _build_serialized(trt, prepared_path, options, cache_path, timings)
        prepared = onnx.load(str(prepared_path))
    summary = trt_layers.summarize(
        built["layers"], trt_layers.qdq_node_names(prepared), trt_layers.quantized_convolutions(prepared)
    )
    warnings = trt_layers.summary_warnings(summary)
    for warning in warnings:
        log.warning(warning)
    plan_path.parent.mkdir(parents=True, exist_ok=True)
    plan_path.write_bytes(plan_bytes)
    timings["total_s"] = round(time.perf_counter() - total, 3)
    manifest = bundle.manifest
    sidecar = PlanSidecar(
        plan_file=plan_path.name,
        plan_sha256=sha256_file(plan_path),
        model_id=manifest.model_id,
        onnx_sha256=manifest.graph.sha256,
        gpu_name=device.gpu_name,
        compute_capability=device.compute_capability or "",
        sm_count=device.sm_count or 0,
        total_memory_mb=device.total_memory_mb or 0,
        module_model=device.module_model,
        tensorrt_version=trt.__version__,
        edge_inspector_version=__version__,
        bit_plan=dict(manifest.quantization.bit_plan),
        keep_fp32_nodes=preparation.fp32_nodes,
        build_options={
            **{k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(options).items()},
            "timing_cache": str(cache_path),
            "strongly_typed": True,
            "profile": built["profile"],
            "activation_memory_mb": built["activation_memory_mb"],
            "preparation": preparation.to_dict(),
            "fp16_check": fp16_check,
        },
        build_timings_s=timings,
        engine_layers=[layer.to_dict() for layer in built["layers"]],
        precision_summary=summary,
    )
    sidecar_file = write_sidecar(plan_path, sidecar)
    log.info("tensorrt plan built", extra=kv(plan=str(plan_path), **timings))
    return BuildResult(plan_path, sidecar_file, sidecar, preparation, fp16_check, warnings)
