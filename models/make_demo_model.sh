#!/usr/bin/env bash
# Rebuild the bundled demo model (edge_inspector/demo_model, package data; 'model: demo' names it): HaloAE-lite trained on the demo line's gravel parts (about 10 minutes on 2 CPU cores).
# Three disjoint seeds: training parts (1000), a labelled calibration set for the thresholds (2000), and the
# demo line itself (0, the `edge-inspector demo` default), so the demo never shows the model a part it saw.
set -euo pipefail
cd "$(dirname "$0")/.."
work="${1:-benchmarks/work/demo_model}"
ei=.venv/bin/edge-inspector
rm -rf "$work" && mkdir -p "$work"
$ei demo --write-dataset "$work/train_data" --train-good 240 --seed 1000
# The labelled calibration set is large (200 good, 50 of each defect) because the demo's weakest defects score close
# to its best-looking good parts: the threshold needs the tails of both.
$ei demo --write-dataset "$work/calib_data" --train-good 1 --test-good 200 --test-defects 50 --seed 2000
# score.head=location: on the demo line's calibration seeds (2000-2004, 240 parts) the location head separates
# good from defective parts better than the reconstruction head that 'auto' picks on synthetic probes
# (F1 0.993 vs 0.980 at the F1-optimal threshold); seed 0, the demo's own, took no part in the choice.
$ei train --data "$work/train_data/demo_gravel" --config haloae-lite --out "$work/bundle" \
    model.width=128 model.height=128 train.threads=1 score.head=location
# F1-optimal image and pixel thresholds from the labelled calibration parts, written into the bundle.
$ei eval --model "$work/bundle" --data "$work/calib_data/demo_gravel" --out "$work/calib_eval" --overlays 0 --write-thresholds
# The figures in models/README.md: the test split of the training seed (parts the model never fitted).
$ei eval --model "$work/bundle" --data "$work/train_data/demo_gravel" --out "$work/eval"
rm -rf edge_inspector/demo_model && mkdir -p edge_inspector/demo_model
cp "$work/bundle/"{model.onnx,manifest.yaml,calibration.npz} edge_inspector/demo_model/
