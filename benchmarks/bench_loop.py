"""Loop benchmark (issue 3): the whole line vs inference alone, on the demo line and on magnetic_tile test images.

For each source, in the same run and with the same engine settings:

* **inference alone**: the engine on preprocessed model inputs held in memory (no capture, no threads);
* **whole loop**: ``InspectionLoop`` in triggered mode (every frame judged, none dropped): capture/decode,
  preprocess, inference, decision, overlay (FAIL parts, as with the archive on) and publish (MQTT when ``--mqtt``
  names a broker, else an in-memory sink).

``loop_p50_ms`` is the p50 of the loop's period per part in steady state (time for 25 consecutive results / 25): what
the loop costs per part while its stages overlap. Target: ``loop_p50_ms <= 1.15 * inference_p50_ms``.
``latency_ms`` holds each stage's p50/p99 inside the loop; its ``total`` (capture to decision) includes waiting in
the bounded queues of a saturated loop. ``*_cpu_ms_per_frame`` (process CPU time per frame) is the steadier
comparison on a machine shared with other work.

    .venv/bin/python benchmarks/bench_loop.py --calibrate 100              # the demo model, both sources
    .venv/bin/python benchmarks/bench_loop.py --model path/to/bundle --threads 4 --mqtt mqtt://127.0.0.1:1883

Writes benchmarks/results/loop_<model_id>_<source>_<stamp>.json (command, date, machine, fps, loop_p50_ms,
inference_p50_ms, overhead, per-stage latency).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from edge_inspector.engines.latency import LatencyStats
from edge_inspector.engines.records import new_record, script_command, write_record

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
WORK = HERE / "work"
DATASET = Path("/work/shared/datasets/magnetic_tile")
TARGET_OVERHEAD = 0.15
WINDOW = 25


def percentiles(values: list[float]) -> dict[str, float]:
    return {key: round(value, 4) for key, value in LatencyStats.of(values).to_dict().items()}


def make_source(kind: str, args: argparse.Namespace, capture):
    from edge_inspector.capture.demo_line import DemoLine
    from edge_inspector.capture.sources import FolderSource

    if kind == "demo":
        return DemoLine(capture, parts=args.frames, seed=args.seed)
    return FolderSource(Path(args.data) / "test", capture)


def inference_alone(engine, manifest, kind: str, args: argparse.Namespace, capture) -> dict:
    """The engine on in-memory model inputs: the floor the loop is compared with."""
    from edge_inspector.preprocess import to_model_input

    source = make_source(kind, args, capture)
    source.open()
    spec = manifest.input
    inputs = []
    while len(inputs) < args.frames and (frame := source.read()) is not None:
        inputs.append(to_model_input(frame.image, spec.width, spec.height, spec.resize, spec.pad_value)[0])
    source.close()
    for image in inputs[: args.warmup]:
        engine.infer(image)
    times = []
    cpu = time.process_time()
    for image in tqdm(inputs, desc=f"{kind}: inference alone", unit="img"):
        start = time.perf_counter()
        engine.infer(image)
        times.append((time.perf_counter() - start) * 1e3)
    cpu_ms = (time.process_time() - cpu) * 1e3 / len(inputs)
    return {"images": len(inputs), "times": times, "cpu_ms_per_frame": cpu_ms}


class IntervalSink:
    """Records when each result reaches the sinks (the loop's output rate)."""

    def __init__(self) -> None:
        self.stamps: list[float] = []

    def handle(self, result) -> None:
        self.stamps.append(time.perf_counter())

    def close(self) -> None:
        pass


def calibrate(engine, manifest, folder: Path, count: int) -> dict:
    """Thresholds from good images (q99 of scores, q99.9 of map values, +10 %), for a bundle made for another product.

    Without it the placeholder demo model would reject every magnetic tile, and the loop would draw an overlay and
    trace regions for every part: not what a line with a matching model does.
    """
    import cv2

    from edge_inspector.preprocess import to_model_input

    spec = manifest.input
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in {".png", ".jpg", ".jpeg", ".bmp"})[:count]
    outputs = [engine.infer(to_model_input(cv2.imread(str(f)), spec.width, spec.height, spec.resize)[0])
               for f in tqdm(files, desc="calibrating thresholds", unit="img")]
    scores = np.array([o.score for o in outputs])
    pixels = np.concatenate([o.anomaly_map.ravel()[::7] for o in outputs])
    return {"threshold": float(np.quantile(scores, 0.99) * 1.1),
            "pixel_threshold": float(np.quantile(pixels, 0.999) * 1.1),
            "calibrated_on": f"{folder} ({len(files)} images)"}


def whole_loop(engine, manifest, kind: str, args: argparse.Namespace, capture, decision) -> dict:
    from edge_inspector.pipeline.loop import InspectionLoop

    intervals = IntervalSink()
    sinks = [intervals]
    if args.mqtt:  # a publisher per round: the loop stops it with its sinks at the end
        from edge_inspector.config import MqttSettings
        from edge_inspector.publish.mqtt import ResultPublisher

        spool = WORK / f"bench_loop_spool_{time.time_ns()}"
        publisher = ResultPublisher(MqttSettings(url=args.mqtt, spool_dir=str(spool)), "bench")
        publisher.start()
        sinks.insert(0, publisher)
    loop = InspectionLoop(make_source(kind, args, capture), engine, manifest, sinks, capture=capture,
                          decision=decision, station="bench", overlay=args.overlay)
    progress = tqdm(total=args.frames, desc=f"{kind}: whole loop", unit="img")
    start, cpu = time.perf_counter(), time.process_time()
    loop.start()
    while not loop.wait(0.25):
        progress.n = len(intervals.stamps)
        progress.refresh()
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    loop.stop()
    progress.n = len(intervals.stamps)
    progress.close()
    stats = loop.snapshot()
    stamps = np.asarray(intervals.stamps[args.warmup:])
    # Results leave the stages in small bursts; the period over a window of WINDOW results smooths that out.
    steady = (stamps[WINDOW:] - stamps[:-WINDOW]) * 1e3 / WINDOW
    return {
        "judged": stats["counts"].get("judged", 0),
        "dropped": stats["counts"].get("dropped", 0),
        "verdicts": {v: stats["counts"].get(v, 0) for v in ("PASS", "FAIL", "UNKNOWN")},
        "fps": round(len(intervals.stamps) / wall, 2),
        "cpu_ms_per_frame": cpu * 1e3 / max(1, len(intervals.stamps)),
        "periods": steady.tolist(),
        "latency_ms": {stage: {k: round(v, 4) for k, v in values.items()}
                       for stage, values in stats["latency_ms"].items()},
    }


def run(kind: str, args: argparse.Namespace) -> dict:
    from edge_inspector.bundle.store import load_bundle
    from edge_inspector.config import CaptureSettings, DecisionSettings, EngineSettings
    from edge_inspector.engines.select import open_engine

    bundle = load_bundle(args.model)
    engine = open_engine(bundle, EngineSettings(backend=args.backend, intra_op_threads=args.threads))
    capture = CaptureSettings(mode="triggered", max_frames=args.frames, loop=kind == "magnetic_tile")
    thresholds = {}
    if kind == "magnetic_tile" and args.calibrate:
        thresholds = calibrate(engine, bundle.manifest, Path(args.data) / "train" / "good", args.calibrate)
    decision = DecisionSettings(**{k: v for k, v in thresholds.items() if k != "calibrated_on"})
    # Alternate the two measurements over several rounds so a load change on a shared machine hits both alike.
    rounds = [(inference_alone(engine, bundle.manifest, kind, args, capture),
               whole_loop(engine, bundle.manifest, kind, args, capture, decision))
              for _ in range(args.rounds)]
    alone = {"images": sum(a["images"] for a, _ in rounds), **percentiles([t for a, _ in rounds for t in a["times"]])}
    periods = [p for _, loop in rounds for p in loop.pop("periods")]
    for first, _ in rounds:
        first.pop("times")
    alone["cpu_ms_per_frame"] = round(float(np.mean([a.pop("cpu_ms_per_frame") for a, _ in rounds])), 4)
    loop_cpu = round(float(np.mean([loop["cpu_ms_per_frame"] for _, loop in rounds])), 4)
    loop = {"rounds": [loop for _, loop in rounds], "period_ms": percentiles(periods),
            "fps": round(float(np.mean([loop["fps"] for _, loop in rounds])), 2)}
    loop_p50 = loop["period_ms"]["p50"]
    overhead = loop_p50 / alone["p50"] - 1
    record = new_record(script_command(), "onnxruntime", **{
        "benchmark": "loop",
        "source": kind if kind == "demo" else f"{args.data}/test",
        "frames": args.frames,
        "model_id": bundle.manifest.model_id,
        "model_input": f"{bundle.manifest.input.width}x{bundle.manifest.input.height}",
        "engine": engine.describe(),
        "overlay": args.overlay,
        "thresholds": thresholds or "from the bundle",
        "publish": f"mqtt {args.mqtt}" if args.mqtt else "in-memory sink (no broker)",
        "fps": loop["fps"],
        "inference_fps": round(1e3 / alone["mean"], 2),
        "rounds": args.rounds,
        "loop_p50_ms": loop_p50,
        "loop_p99_ms": loop["period_ms"]["p99"],
        "inference_p50_ms": alone["p50"],
        "inference_p99_ms": alone["p99"],
        "overhead_p50": round(overhead, 4),
        "inference_cpu_ms_per_frame": alone["cpu_ms_per_frame"],
        "loop_cpu_ms_per_frame": loop_cpu,
        "cpu_overhead": round(loop_cpu / alone["cpu_ms_per_frame"] - 1, 4),
        "target": {"max_overhead_p50": TARGET_OVERHEAD, "met": overhead < TARGET_OVERHEAD},
        "inference_alone": alone,
        "loop": loop,
    })
    engine.close()
    path = write_record(RESULTS, f"loop_{bundle.manifest.model_id}_{kind}", record)
    print(f"{kind}: fps {record['fps']}, loop p50 {loop_p50:.2f} ms vs inference p50 {alone['p50']:.2f} ms "
          f"(overhead {overhead:+.1%}, target < {TARGET_OVERHEAD:.0%}); CPU per frame {loop_cpu:.2f} ms vs "
          f"{alone['cpu_ms_per_frame']:.2f} ms ({record['cpu_overhead']:+.1%}) -> {path}")
    return record


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(HERE.parent / "edge_inspector" / "demo_model"), help="bundle folder")
    parser.add_argument("--data", default=str(DATASET), help="MVTec-layout folder whose test/ images are read")
    parser.add_argument("--sources", nargs="+", default=["demo", "magnetic_tile"], choices=["demo", "magnetic_tile"])
    parser.add_argument("--frames", type=int, default=200, help="judged frames per source and round")
    parser.add_argument("--warmup", type=int, default=10, help="frames left out of the statistics")
    parser.add_argument("--threads", type=int, default=0, help="ONNX Runtime intra-op threads (0 = all cores)")
    parser.add_argument("--backend", default="onnxruntime", choices=["auto", "onnxruntime", "tensorrt"])
    parser.add_argument("--overlay", default="fail", choices=["fail", "all", "none"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--calibrate", type=int, default=0, metavar="N",
                        help="magnetic_tile: thresholds from N train/good images instead of the bundle's "
                             "(for a bundle trained on something else, e.g. the placeholder demo model)")
    parser.add_argument("--rounds", type=int, default=3, help="alternations of inference alone and whole loop")
    parser.add_argument("--mqtt", metavar="URL", help="publish to this broker (default: no MQTT)")
    args = parser.parse_args()
    if args.frames < args.warmup + WINDOW + 1:
        parser.error(f"--frames must be at least --warmup + {WINDOW + 1} ({args.warmup + WINDOW + 1}): the steady "
                     f"period is measured over windows of {WINDOW} results after the warm-up")
    if "magnetic_tile" in args.sources and not (Path(args.data) / "test").is_dir():
        parser.error(f"{args.data}/test not found (set --data or --sources demo)")
    for kind in args.sources:
        run(kind, args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
