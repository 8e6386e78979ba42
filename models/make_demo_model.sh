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
$ei demo --write-dataset "$work/calib_data" --train-good 10 --seed 2000
$ei train --data "$work/train_data/demo_gravel" --config haloae-lite --out "$work/bundle" \
    model.width=128 model.height=128 train.threads=1
# F1-optimal image and pixel thresholds from the labelled calibration parts, written into the bundle.
$ei eval --model "$work/bundle" --data "$work/calib_data/demo_gravel" --out "$work/calib_eval" --overlays 0 --write-thresholds
# The figures in models/README.md: the test split of the training seed (parts the model never fitted).
$ei eval --model "$work/bundle" --data "$work/train_data/demo_gravel" --out "$work/eval"
rm -rf edge_inspector/demo_model && mkdir -p edge_inspector/demo_model
cp "$work/bundle/"{model.onnx,manifest.yaml,calibration.npz} edge_inspector/demo_model/
