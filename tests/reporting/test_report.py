"""write_report end to end on a synthetic results database."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import pytest

from moelab.experiments.store import ResultStore, StoreError
from moelab.reporting import write_report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _without_date(markdown: str) -> str:
    return "\n".join(line for line in markdown.splitlines() if not line.startswith("Generated "))


def _section(markdown: str, name: str) -> str:
    """The markdown of one experiment's section (up to the next section)."""
    start = markdown.index(f"\n## {name}: ")
    end = markdown.find("\n## ", start + 1)
    return markdown[start:end if end > 0 else None]


@pytest.fixture(scope="module")
def full_report(paper_results):
    directory, total = paper_results
    path = write_report(directory)
    return directory, total, path.read_text()


@pytest.fixture(scope="module")
def table3_only(tmp_path_factory, fake_runs):
    directory = tmp_path_factory.mktemp("table3")
    fake_runs(ResultStore(directory), "table3")
    return directory


def test_report_has_the_paper_tables_beside_ours(full_report):
    directory, _, md = full_report
    assert (directory / "report.md").is_file()
    t3 = _section(md, "table3")
    for d, paper in (("16", "3.40e-04"), ("32", "3.38e-04"), ("64", "3.17e-04"), ("128", "3.42e-04")):
        row = next(line for line in t3.splitlines() if line.startswith(f"| {d} |"))
        assert paper in row
        # fake best-recipe median 1.2e-4 * median(1, 1.15) = 1.29e-4 with its [min, max]
        assert "1.29e-04 [1.20e-04, 1.38e-04]" in row
    assert "| max/min over D | 1.00 | 1.08 |" in t3  # ours (paper recipe), the paper's own
    t4 = _section(md, "table4")
    for value in ("8.32e-05", "1.41e-05", "4.73e-06", "2.59e-06",
                  "7.96e-05", "2.17e-05", "2.65e-05", "4.60e-05"):
        assert value in t4
    for out in ("vector", "sum", "product"):
        for rec in ("paper", "best"):
            assert f"(output {out}, recipe {rec})**" in t4
    assert "| 2-3-MoE | 128 | vector | best | 2 | 9 [9, 9] | 9 [9, 9] | 9 [9, 9] |" in t4


def test_the_hand_built_network_is_read_from_the_store_not_built(full_report, tmp_path,
                                                                  monkeypatch, fake_runs):
    _, _, md = full_report
    t4 = _section(md, "table4")
    # the constructions experiment's stored thm5.3 runs (fake sup error 0.75 m^-2)
    assert "Contrast: the hand-built deep network of Thm 5.3" in t4
    assert "| Thm 5.3, Eq. (4), E=3, L=2 | 16 | 1 | 2.15e-06 | 2.93e-03 | 9 / 9 | 300 |" in t4
    import moelab.constructions as constructions

    def never(*args, **kwargs):
        raise AssertionError("a construction was built at report time")

    monkeypatch.setattr(constructions, "build_piecewise_moe", never)
    monkeypatch.setitem(constructions.CONSTRUCTIONS, "thm5.3", never)
    fake_runs(ResultStore(tmp_path), "table4", seeds=1)
    t4 = _section(write_report(tmp_path).read_text(), "table4")
    assert "hand-built Thm 5.3 network is not in this database" in t4
    assert "`moelab run constructions --out DIR`" in t4


def test_verdicts_state_status_check_and_numbers(full_report):
    _, _, md = full_report
    t3 = _section(md, "table3")
    assert ("- **HELD** (provisional): (a) best recipe: median <= 2x the paper at every D: "
            "D=16: 0.379x") in t3
    assert "- **HELD** (provisional): (b) flat in D (recipe best)" in t3
    t4 = _section(md, "table4")
    assert ("- **HELD** (provisional): 2-3-MoE beats 1-6-MoE at the largest m (output vector, "
            "recipe best): m=128: test MSE 3.09e-06 vs 6.99e-05") in t4
    assert "- **HELD** (provisional): 2-3-MoE keeps improving with m while 1-6-MoE plateaus" in t4
    assert "2-3-MoE -1.60" in t4 and "1-6-MoE -0.10" in t4


def test_every_linked_figure_is_a_png(full_report):
    directory, _, md = full_report
    links = re.findall(r"\]\((figures/[^)\s]+\.png)\)", md)
    assert {Path(link).stem for link in links} == {
        "table3-mse-vs-D", "table3-routing", "table4-routing", "table4-mse-vs-m-vector",
        "table4-mse-vs-m-sum", "table4-mse-vs-m-product", "constructions-rate",
        "custom-sweep-test-mse"}
    for link in links:
        data = (directory / link).read_bytes()
        assert len(data) > 1000 and data.startswith(PNG_MAGIC), link
    assert not list(directory.rglob("*.tmp"))


def test_exports_hold_one_row_per_run(full_report):
    directory, total, _ = full_report
    with (directory / "results.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == total
    assert {r["experiment"] for r in rows} >= {"table3", "table4", "custom-sweep"}
    text = (directory / "results.json").read_text()
    records = json.loads(text)
    assert len(records) == total and len({r["run_id"] for r in records}) == total
    assert all(r["history"] and r["evals"] for r in records if r["experiment"] == "table3")
    lines = text.splitlines()  # one run a line, between the list's brackets
    assert lines[0] == "[" and lines[-1] == "]" and len(lines) == total + 2
    assert [json.loads(line.rstrip(",")) for line in lines[1:-1]] == records


def test_header_counts_runs_and_unregistered_experiments_get_the_generic_table(full_report):
    _, total, md = full_report
    assert md.startswith("# moelab results report\n")
    assert f"**{total} runs** in the database" in md
    assert "*Claim:* The test error of a shallow MoE does not depend on the ambient dimension" in md
    custom = _section(md, "custom-sweep")
    assert "| 0.01 | 2 | 3.00e-03 [2.00e-03, 4.00e-03] |" in custom
    assert "(not a registered experiment: no claim to check)" in custom


def test_experiments_without_runs_are_skipped_with_a_line(table3_only):
    md = write_report(table3_only).read_text()
    assert "## table3: " in md
    assert "- **table4**: no runs in this database, skipped." in md
    assert "- **intrinsic**: no runs in this database, skipped." in md
    assert "## table4" not in md
    md = write_report(table3_only, experiments=["table3", "gating"]).read_text()
    assert "- **gating**: no runs in this database, skipped." in md
    assert "table4" not in md


def test_writing_twice_gives_the_same_markdown(table3_only):
    first = write_report(table3_only).read_text()
    png = (table3_only / "figures" / "table3-routing.png").read_bytes()
    second = write_report(table3_only).read_text()
    assert _without_date(first) == _without_date(second)
    assert (table3_only / "figures" / "table3-routing.png").read_bytes() == png


def test_bad_experiment_names_are_clear_errors(table3_only):
    with pytest.raises(ValueError, match=r"unknown \['tabel3'\]"):
        write_report(table3_only, experiments=["tabel3"])
    with pytest.raises(TypeError, match="sequence of names"):
        write_report(table3_only, experiments="table3")


def test_not_a_database_is_a_store_error_and_the_old_report_survives(tmp_path):
    (tmp_path / "results.sqlite").write_bytes(b"this is not an SQLite file\n" * 100)
    (tmp_path / "report.md").write_text("old report\n")
    with pytest.raises(StoreError, match="not a moelab results database"):
        write_report(tmp_path)
    assert (tmp_path / "report.md").read_text() == "old report\n"
    assert not (tmp_path / "figures").exists() and not (tmp_path / "results.csv").exists()


def test_missing_database_is_a_store_error(tmp_path):
    with pytest.raises(StoreError, match="no results database"):
        write_report(tmp_path)
    assert not (tmp_path / "results.sqlite").exists()


def test_a_crash_while_writing_leaves_the_old_report(table3_only, monkeypatch):
    before = write_report(table3_only).read_text()

    def crash(self, path):
        raise OSError("disk full")

    monkeypatch.setattr(ResultStore, "export_json", crash)
    with pytest.raises(OSError, match="disk full"):
        write_report(table3_only)
    assert (table3_only / "report.md").read_text() == before
    assert not list(table3_only.rglob("*.tmp"))
