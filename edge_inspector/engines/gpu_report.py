"""The GPU section of a machine check: what the TensorRT path needs, what is there, and whether the plans fit.

``gpu_report(bundle)`` gathers the facts (never raises) and judges them; it returns structured results and prints
nothing, so ``edge-inspector build-engine --check`` and a machine-wide ``doctor`` show the same thing. The judging
(``assess``) is pure and tested on the CPU with made-up machines: a CUDA 13 TensorRT on a CUDA 12 driver, a pip
TensorRT shadowing JetPack's, pycuda missing, a plan built on another module.
"""

from __future__ import annotations

import importlib.metadata
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from edge_inspector.bundle.plans import DeviceInfo, list_plans, plan_differences, rebuild_command
from edge_inspector.bundle.store import Bundle
from edge_inspector.engines.cuda_buffers import GpuProbe, probe_gpu
from edge_inspector.engines.trt_run import board_model, load_tensorrt
from edge_inspector.errors import JETSON_RELEASE_FILE, EdgeInspectorError

DRIVER_VERSION_FILE = Path("/proc/driver/nvidia/version")
PYCUDA_CUDA13_FLOOR = (2025, 1, 2)
"""First pycuda release that compiles against CUDA 13."""
Status = Literal["ok", "warn", "fail", "info"]


@dataclass(frozen=True)
class Check:
    name: str
    status: Status
    detail: str


@dataclass(frozen=True)
class MachineFacts:
    """Everything the GPU check looks at; ``None`` means absent."""

    gpu: GpuProbe
    tensorrt_version: str | None = None
    tensorrt_problem: str | None = None
    tensorrt_path: str | None = None
    tensorrt_wheel_cuda: int | None = None
    """CUDA major of a pip-installed TensorRT (``tensorrt-cu12*`` / ``tensorrt-cu13*``); None for a system one."""
    pycuda_version: str | None = None
    kernel_driver: str | None = None
    """From /proc/driver/nvidia/version (desktops), e.g. '550.54.14'."""
    jetson_release: str | None = None
    """First line of /etc/nv_tegra_release (Jetsons), e.g. '# R36 (release), REVISION: 4.0, ...'."""
    board: str = ""
    tensorrt_in_venv: bool = False
    """TensorRT was imported from this virtualenv's own site-packages (a pip wheel), not from the system."""


@dataclass
class GpuReport:
    device: DeviceInfo
    checks: list[Check] = field(default_factory=list)

    @property
    def usable(self) -> bool:
        """True when nothing failed: TensorRT can build and run here (and the plans checked fit)."""
        return all(check.status != "fail" for check in self.checks)

    def lines(self) -> list[str]:
        width = max((len(c.name) for c in self.checks), default=0)
        return [f"{c.name.ljust(width)}  {c.status:4}  {c.detail}" for c in self.checks]


def _version_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(n) for n in re.findall(r"\d+", text)[:3])


def _tensorrt_wheel_cuda() -> int | None:
    for major in (13, 12, 11):
        for name in (f"tensorrt-cu{major}-libs", f"tensorrt-cu{major}"):
            try:
                importlib.metadata.version(name)
                return major
            except importlib.metadata.PackageNotFoundError:
                continue
    return None


def _read_first_line(path: Path) -> str | None:
    try:
        return path.read_text(errors="replace").splitlines()[0].strip()
    except (OSError, IndexError):
        return None


def gather_facts(device: int = 0) -> MachineFacts:
    """Look at this machine (imports tensorrt and pycuda where present; never raises)."""
    try:
        trt = load_tensorrt()
        trt_version, trt_problem, trt_path = trt.__version__, None, str(getattr(trt, "__file__", "") or "")
    except EdgeInspectorError as exc:
        trt_version, trt_problem, trt_path = None, str(exc), None
    try:
        pycuda_version = importlib.metadata.version("pycuda")
    except importlib.metadata.PackageNotFoundError:
        pycuda_version = None
    driver_line = _read_first_line(DRIVER_VERSION_FILE) or ""
    kernel_driver = re.search(r"Kernel Module\s+(?:for \S+\s+)?(\d[\d.]*)", driver_line)
    return MachineFacts(
        gpu=probe_gpu(device), tensorrt_version=trt_version, tensorrt_problem=trt_problem, tensorrt_path=trt_path,
        tensorrt_wheel_cuda=_tensorrt_wheel_cuda(), pycuda_version=pycuda_version,
        kernel_driver=kernel_driver.group(1) if kernel_driver else None,
        jetson_release=_read_first_line(JETSON_RELEASE_FILE), board=board_model(),
        tensorrt_in_venv=bool(trt_path) and sys.prefix != sys.base_prefix and trt_path.startswith(sys.prefix),
    )


def _platform_checks(facts: MachineFacts) -> list[Check]:
    gpu = facts.gpu
    checks = []
    if facts.jetson_release:
        checks.append(Check("platform", "info", f"Jetson, L4T {facts.jetson_release.lstrip('# ')}; "
                                                f"board '{facts.board or 'unknown'}'"))
    if gpu.name:
        checks.append(Check("GPU", "ok", f"{gpu.name}, compute capability {gpu.compute_capability}, "
                                         f"{gpu.sm_count} SMs, {gpu.total_memory_mb} MiB"))
    else:
        checks.append(Check("GPU", "fail", gpu.problem or "no NVIDIA GPU found"))
    driver = facts.kernel_driver or ("from JetPack" if facts.jetson_release else "not found")
    supports = f"; supports CUDA {gpu.driver_cuda_version}" if gpu.driver_cuda_version else ""
    found = gpu.driver_cuda_version or facts.kernel_driver or facts.jetson_release
    checks.append(Check("driver", "ok" if found else "fail", f"{driver}{supports}"))
    return checks


def _tensorrt_check(facts: MachineFacts) -> Check:
    if facts.tensorrt_version is None:
        return Check("TensorRT", "fail", facts.tensorrt_problem or "not installed")
    detail = f"{facts.tensorrt_version} ({facts.tensorrt_path or 'location unknown'})"
    if facts.jetson_release and facts.tensorrt_in_venv:
        return Check("TensorRT", "fail", f"{detail}: a pip-installed TensorRT shadows JetPack's; pip uninstall it "
                                         "and use JetPack's (venv with --system-site-packages)")
    driver = facts.gpu.driver_cuda_version
    wheel = facts.tensorrt_wheel_cuda
    if wheel and driver and _version_tuple(driver)[0] < wheel:
        return Check("TensorRT", "fail", f"{detail} is built for CUDA {wheel}, but the driver supports only CUDA "
                                         f"{driver}: install 'edge-inspector[tensorrt-cu{_version_tuple(driver)[0]}]' "
                                         "or update the driver (CUDA 13 needs 580 or newer)")
    return Check("TensorRT", "ok", detail + (f", wheel for CUDA {wheel}" if wheel else ", system package"))


def _cuda_checks(facts: MachineFacts) -> list[Check]:
    gpu = facts.gpu
    if facts.pycuda_version is None:
        return [Check("pycuda", "fail", "not installed (the TensorRT path needs it for GPU buffers)")]
    checks = [Check("pycuda", "ok", f"{facts.pycuda_version}, compiled against CUDA "
                                    f"{gpu.pycuda_cuda_version or 'unknown (it cannot load the driver)'}")]
    built, driver = gpu.pycuda_cuda_version, gpu.driver_cuda_version
    if built and driver and _version_tuple(built)[:1] > _version_tuple(driver)[:1]:
        checks.append(Check("CUDA", "fail", f"pycuda was compiled against CUDA {built}; the driver supports only "
                                            f"{driver}: rebuild pycuda against the installed toolkit"))
    elif built and _version_tuple(built)[0] >= 13 and _version_tuple(facts.pycuda_version) < PYCUDA_CUDA13_FLOOR:
        checks.append(Check("CUDA", "warn", f"pycuda {facts.pycuda_version} predates CUDA 13 support (2025.1.2)"))
    elif built:
        checks.append(Check("CUDA", "ok", f"toolkit {built}, driver {driver or 'unknown'}"))
    return checks


def _plan_checks(device: DeviceInfo, bundle: Bundle) -> list[Check]:
    plans = list_plans(bundle.plans_dir)
    if not plans:
        return [Check("plan", "info", f"none in {bundle.plans_dir}; build one with: {rebuild_command(bundle.path)}")]
    checks = []
    for plan, sidecar in plans:
        if sidecar is None:
            checks.append(Check(f"plan {plan.name}", "fail", "no readable side-car: rebuild it"))
            continue
        diffs = plan_differences(sidecar, device, bundle.manifest.graph.sha256)
        status: Status = "fail" if diffs else "ok"
        checks.append(Check(f"plan {plan.name}", status, "; ".join(diffs) or "fits this GPU, TensorRT and graph"))
    return checks


def assess(facts: MachineFacts, bundle: Bundle | None = None) -> GpuReport:
    """Judge ``facts`` (and the plans of ``bundle``, when given)."""
    gpu = facts.gpu
    device = DeviceInfo(gpu.name, gpu.compute_capability, facts.tensorrt_version, gpu.sm_count,
                        gpu.total_memory_mb, facts.board, gpu.problem)
    checks = [*_platform_checks(facts), _tensorrt_check(facts), *_cuda_checks(facts)]
    if bundle is not None:
        checks += _plan_checks(device, bundle)
    return GpuReport(device, checks)


def gpu_report(bundle: Bundle | None = None, device: int = 0) -> GpuReport:
    """This machine's GPU section: GPU, driver, CUDA, TensorRT, pycuda, and whether ``bundle``'s plans fit."""
    return assess(gather_facts(device), bundle)
