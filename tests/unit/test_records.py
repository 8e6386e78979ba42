"""Benchmark records and text tables (``engines.records``)."""

from __future__ import annotations

import json

from edge_inspector.engines.records import format_table, new_record, write_json, write_record


def test_a_record_starts_with_command_date_and_machine(tmp_path, capsys):
    doc = new_record("edge-inspector bench --model x", "numpy", "no-such-package", rows=[1, 2])
    assert list(doc)[:3] == ["command", "date", "machine"] and doc["rows"] == [1, 2]
    assert doc["machine"]["cores"] >= 1 and doc["machine"]["numpy"] and doc["machine"]["no-such-package"] is None
    path = write_record(tmp_path / "results", "bench_demo", doc)
    assert path.parent == tmp_path / "results" and path.name.startswith("bench_demo_") and path.suffix == ".json"
    assert json.loads(path.read_text()) == doc and f"wrote {path}" in capsys.readouterr().out
    assert json.loads(write_json(tmp_path / "deep" / "b.json", {"x": 1}).read_text()) == {"x": 1}


def test_table_columns_fit_their_widest_cell_and_a_short_row_ends_in_a_note():
    table = format_table(("name", "ms"), [["fp32", "7.94"], ["hqs-small", "skipped: no plan for this GPU"]])
    assert table.splitlines() == [
        "name       ms",
        "fp32       7.94",
        "hqs-small  skipped: no plan for this GPU",
    ]


def test_figures_right_aligned_under_a_rule():
    table = format_table(("group", "n", "AUROC"), [["overall", "678", "0.928"], ["crack", "34", "0.88"]],
                         right_from=1, rule=True)
    assert table.splitlines() == [
        "group      n  AUROC",
        "-------------------",
        "overall  678  0.928",
        "crack     34   0.88",
    ]
