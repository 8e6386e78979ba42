"""The ``train``, ``export`` and ``eval`` commands end to end on a tiny synthetic MVTec-layout dataset."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from edge_inspector.bundle.store import load_bundle
from edge_inspector.cli import main
from edge_inspector.data.folders import scan_category, split_holdout
from edge_inspector.export.onnx_export import export_bundle
from edge_inspector.model.normal_stats import fit_normal_statistics
from edge_inspector.model.scorer import AnomalyScorer
from tests.compile.stand_in_model import StandInModel
from tests.fixtures.synthetic_dataset import write_synthetic_category

torch.set_num_threads(1)
SIZE = 64


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return write_synthetic_category(tmp_path_factory.mktemp("data") / "tiles", n_train=12, n_test_good=4,
                                    n_test_defect=3)


@pytest.fixture(scope="module")
def stand_in_bundle(dataset, tmp_path_factory):
    """A bundle of the stand-in scorer, normal statistics from the holdout of the synthetic train/good."""
    from edge_inspector.data.folders import load_images

    category = scan_category(dataset)
    _, holdout_paths = split_holdout(category.train, 0.25, seed=0)
    holdout = load_images(holdout_paths, SIZE, SIZE)
    scorer = AnomalyScorer(StandInModel(), SIZE, SIZE, "max", blur_sigma=1.0)
    stats = fit_normal_statistics(scorer, holdout)
    bundle = export_bundle(scorer, tmp_path_factory.mktemp("bundle") / "b", "tiles-stand-in", "stretch", stats,
                           stats.thresholds(), None, holdout)
    return bundle


def test_eval_bundle_through_onnxruntime(dataset, stand_in_bundle, tmp_path, capsys):
    out = tmp_path / "eval"
    rc = main(["eval", "--model", str(stand_in_bundle.path), "--data", str(dataset), "--out", str(out),
               "--no-progress", "--overlays", "3"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "overall" in printed and "scratch" in printed and "stain" in printed and "mean over types" in printed
    result = json.loads((out / "result.json").read_text())
    assert result["engine"] == "onnxruntime" and result["aggregation"] == "max"
    overall = result["metrics"]["overall"]
    assert overall["n_images"] == 10 and overall["n_defective"] == 6
    # The stand-in sees pasted scratches and stains on a texture: clearly better than chance at image and pixel level.
    assert overall["image_auroc"] > 0.8 and overall["pixel_auroc"] > 0.8
    assert {"image_auroc_mean", "image_auroc_max", "image_auroc_topk", "aupro", "image_f1"} <= set(overall)
    assert result["latency_ms"]["n"] == 10
    types = [result["metrics"][t]["aupro"] for t in ("scratch", "stain")]
    assert result["mean_over_types"]["aupro"] == pytest.approx(sum(types) / 2)
    assert len(list((out / "overlays").glob("*.png"))) == 3
    assert (out / "table.txt").read_text().startswith("tiles:")


def test_eval_refuses_what_it_cannot_use(dataset, stand_in_bundle, tmp_path, capsys):
    assert main(["eval", "--model", str(tmp_path / "nope"), "--data", str(dataset)]) == 2
    assert "no such bundle" in capsys.readouterr().err
    assert main(["eval", "--model", str(stand_in_bundle.path), "--data", str(tmp_path)]) == 2
    assert "train/good is missing" in capsys.readouterr().err
    assert main(["eval", "--model", str(stand_in_bundle.path), "--data", str(dataset), "--engine", "torch"]) == 2
    assert "needs a training checkpoint" in capsys.readouterr().err
    fake_checkpoint = tmp_path / "model.pt"
    fake_checkpoint.write_bytes(b"")
    assert main(["eval", "--model", str(fake_checkpoint), "--data", str(dataset), "--engine", "onnxruntime"]) == 2
    assert "export the checkpoint first" in capsys.readouterr().err


TINY = ["model.width=64", "model.height=64", "train.epochs=1", "train.batch_size=2", "train.holdout_fraction=0.25",
        "train.threads=1"]


@pytest.fixture(scope="module")
def trained(dataset, tmp_path_factory):
    """One real training run of haloae-lite (Lite0 ImageNet weights) at 64x64 for one epoch, through the CLI."""
    out = tmp_path_factory.mktemp("train") / "bundle"
    rc = main(["train", "--data", str(dataset), "--out", str(out), "--no-progress", *TINY])
    assert rc == 0
    return out


@pytest.mark.slow
def test_train_writes_a_bundle_from_train_good_minus_the_holdout(trained, dataset, capsys):
    bundle = load_bundle(trained)
    m = bundle.manifest
    assert (m.input.width, m.input.height) == (64, 64)
    assert m.training.input_size.source == "config"  # the overrides' size wins over the images' (96x80)
    assert m.training.preset == "haloae-lite" and m.training.attention == "halo" and m.training.epochs == 1
    assert (m.training.n_fit, m.training.n_holdout) == (9, 3)  # 12 train/good images, 25 % held back
    assert m.score.image.n == 3 and m.thresholds.image > 0 and m.thresholds.pixel > 0
    assert len(bundle.calibration_images()) == 3
    assert (trained.with_name("bundle.work") / "checkpoints" / "last.pt").is_file()


@pytest.mark.slow
def test_train_resume_continues_from_the_checkpoint(trained, dataset, tmp_path, capsys):
    work = tmp_path / "work"
    shutil.copytree(trained.with_name("bundle.work"), work)  # a copy: the other tests keep the 1-epoch checkpoint
    more = [*TINY[:2], "train.epochs=2", *TINY[3:]]
    rc = main(["train", "--data", str(dataset), "--out", str(tmp_path / "b2"), "--work-dir", str(work),
               "--resume", "--no-progress", *more])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "1 of 2 epochs (resumed at epoch 1)" in printed and "parity" in printed


@pytest.mark.slow
def test_export_command_rebuilds_the_same_bundle_from_the_checkpoint(trained, dataset, tmp_path, capsys):
    checkpoint = trained.with_name("bundle.work") / "checkpoints" / "last.pt"
    assert main(["export", "--checkpoint", str(checkpoint), "--data", str(dataset), "--out", str(tmp_path / "b"),
                 "--no-progress"]) == 0
    # 3 held-back goods cannot set a 1 % false-reject threshold, and the summary says so
    assert "warning     the image threshold is the highest score of only 3 held-back" in capsys.readouterr().out
    again, original = load_bundle(tmp_path / "b").manifest, load_bundle(trained).manifest
    # Same weights, same seeded holdout -> same normal statistics and thresholds.
    assert again.thresholds.image == pytest.approx(original.thresholds.image, rel=1e-5)
    assert again.score.image.mean == pytest.approx(original.score.image.mean, rel=1e-5)
    assert again.training.data_fingerprint == original.training.data_fingerprint


@pytest.mark.slow
def test_checkpoint_eval_in_torch_matches_bundle_eval_in_onnxruntime(trained, dataset, tmp_path):
    checkpoint = trained.with_name("bundle.work") / "checkpoints" / "last.pt"
    results = {}
    for name, model in (("ort", trained), ("torch", checkpoint)):
        assert main(["eval", "--model", str(model), "--data", str(dataset), "--out", str(tmp_path / name),
                     "--no-progress", "--overlays", "0"]) == 0
        results[name] = json.loads((tmp_path / name / "result.json").read_text())
    assert results["ort"]["engine"] == "onnxruntime" and results["torch"]["engine"] == "torch"
    for key in ("image_auroc", "pixel_auroc", "aupro"):
        assert results["ort"]["metrics"]["overall"][key] == pytest.approx(results["torch"]["metrics"]["overall"][key],
                                                                          abs=1e-3)
    # Same holdout, same model -> same thresholds, whether rebuilt for a checkpoint or read from the bundle.
    assert results["ort"]["thresholds"]["image"] == pytest.approx(results["torch"]["thresholds"]["image"], rel=1e-4)


def test_train_refuses_bad_overrides_with_the_key_named(dataset, tmp_path, capsys):
    assert main(["train", "--data", str(dataset), "--out", str(tmp_path / "b"), "model.widht=64"]) == 2
    assert "widht" in capsys.readouterr().err
    assert main(["train", "--data", str(dataset), "--out", str(tmp_path / "b"), "train.holdout_fraction=0",
                 *TINY[:2]]) == 2
    assert "holdout_fraction is 0" in capsys.readouterr().err


def test_eval_writes_f1_thresholds_from_a_labelled_set_into_the_bundle(dataset, stand_in_bundle, tmp_path):
    bundle_dir = tmp_path / "b"
    shutil.copytree(stand_in_bundle.path, bundle_dir)
    before = load_bundle(bundle_dir).manifest.thresholds
    args = ["eval", "--model", str(bundle_dir), "--data", str(dataset), "--no-progress", "--overlays", "0"]
    assert main([*args, "--out", str(tmp_path / "first"), "--write-thresholds"]) == 0
    first = json.loads((tmp_path / "first" / "result.json").read_text())
    written = first["written_thresholds"]
    after = load_bundle(bundle_dir).manifest.thresholds  # still loads: the graph and its hash are untouched
    assert (after.image_method, after.pixel_method) == ("f1", "f1")
    assert (after.image, after.pixel) == (written["image"], written["pixel"]) != (before.image, before.pixel)
    # F1-optimal is at least as good as the calibrated threshold, and evaluating again at the written threshold
    # reproduces the F1 it claimed.
    assert written["image_f1"] >= first["metrics"]["overall"]["image_f1"]
    assert main([*args, "--out", str(tmp_path / "second")]) == 0
    second = json.loads((tmp_path / "second" / "result.json").read_text())
    assert second["metrics"]["overall"]["image_f1"] == pytest.approx(written["image_f1"])


@pytest.mark.slow
def test_export_changes_the_scoring_head_without_retraining(trained, dataset, tmp_path, capsys):
    checkpoint = trained.with_name("bundle.work") / "checkpoints" / "last.pt"
    shipped = load_bundle(trained).manifest.score
    assert shipped.head == "fused" and shipped.head_probe == {}  # haloae-lite ships the fused head, no probe
    for head in ("reconstruction", "location", "auto"):
        assert main(["export", "--checkpoint", str(checkpoint), "--data", str(dataset), "--out", str(tmp_path / head),
                     "--no-progress", f"score.head={head}"]) == 0
        score = load_bundle(tmp_path / head).manifest.score
        if head == "auto":  # picks by synthetic defects on the holdout and records every candidate's figures
            assert set(score.head_probe) == {"reconstruction", "location", "fused"} and score.head in score.head_probe
        else:
            assert score.head == head and score.head_probe == {}
    assert main(["export", "--checkpoint", str(checkpoint), "--data", str(dataset), "--out", str(tmp_path / "x"),
                 "model.width=128"]) == 2
    assert "only score.* settings can change after training" in capsys.readouterr().err


def test_evaluate_from_python_returns_what_the_command_writes(dataset, stand_in_bundle, tmp_path):
    """The Python API and the command are one code path: the returned report is result.json."""
    from edge_inspector.workflows.evaluate import EvalResult, evaluate

    result = evaluate(stand_in_bundle.path, dataset, tmp_path / "api", overlays=0, progress=False)
    assert isinstance(result, EvalResult) and result.out == tmp_path / "api"
    assert json.loads((result.out / "result.json").read_text()) == json.loads(json.dumps(result.report, default=str))
    assert result.summary().startswith("tiles:") and result.report["engine"] == "onnxruntime"


@pytest.mark.slow
def test_training_is_reproducible_from_its_seed(trained, dataset, tmp_path):
    """Same data, preset and seed -> the same weights, whatever ran before in the process (the auto-encoder's
    initial weights come from the preset's seed too, not from the process's random state)."""
    torch.rand(7)  # move the process's random state on
    out = tmp_path / "again"
    assert main(["train", "--data", str(dataset), "--out", str(out), "--no-progress", *TINY]) == 0
    first = torch.load(trained.with_name("bundle.work") / "checkpoints" / "last.pt", weights_only=True)["model"]
    again = torch.load(out.with_name("again.work") / "checkpoints" / "last.pt", weights_only=True)["model"]
    assert first.keys() == again.keys()
    assert all(torch.equal(first[k], again[k]) for k in first)


def test_eval_speaks_plant_language(dataset, stand_in_bundle, tmp_path, capsys):
    """Per-image CSV, counts at the bundle's threshold, a false-reject table and one self-contained HTML report."""
    import csv

    out = tmp_path / "eval"
    assert main(["eval", "--model", str(stand_in_bundle.path), "--data", str(dataset), "--out", str(out),
                 "--no-progress", "--overlays", "2"]) == 0
    printed = capsys.readouterr().out
    rows = list(csv.DictReader((out / "images.csv").open()))
    threshold = stand_in_bundle.manifest.thresholds.image
    assert len(rows) == 10 and {r["truth"] for r in rows} == {"good", "defect"}
    assert all((r["verdict"] == "FAIL") == (float(r["score"]) >= threshold) for r in rows)
    plant = json.loads((out / "result.json").read_text())["plant"]
    counts = plant["confusion"]
    wrong = sum(r["correct"] == "False" for r in rows)
    assert counts["good"]["false_rejects"] + counts["missed_defects"] == wrong
    assert counts["good"]["n"] == 4 and sum(d["n"] for d in counts["defects"].values()) == 6
    assert f"{counts['missed_defects']} of 6 defects missed" in printed
    # 3 held-back goods cannot set a 1 % false-reject threshold: said on the console, in result.json and the report
    assert "warning     the image threshold is the highest score of only 3 held-back good images" in printed
    assert "highest score of only 3" in json.loads((out / "result.json").read_text())["threshold_warning"]
    targets = [row["target_false_reject_rate"] for row in plant["false_reject_table"]]
    assert targets == sorted(targets) and len(targets) >= 3
    thresholds = [row["threshold"] for row in plant["false_reject_table"]]
    assert thresholds == sorted(thresholds, reverse=True)  # accepting more false rejects lowers the threshold
    report = (out / "report.html").read_text()
    assert "data:image/png;base64," in report and "<svg" in report and "Other false-reject targets" in report
    assert "src=\"http" not in report  # self-contained: nothing fetched from elsewhere
    assert "Threshold warning:" in report
