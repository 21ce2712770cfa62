"""Sections of moelab's own studies, built from fake runs whose answers are known, through what
each experiment declares in the registry."""

from __future__ import annotations

import io

import pytest

from moelab.reporting import build_section

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def sections(study_store):
    return {name: build_section(name, study_store.runs(name)) for name in study_store.experiments()}


def _text(section) -> str:
    return section.markdown("figures")


def test_dense_vs_moe_finds_the_factor_E(sections):
    # the fake dense nets need exactly E = 4 times the MoE's activated parameters
    s = sections["dense-vs-moe"]
    assert len(s.verdicts) == 3 and {v.status for v in s.verdicts} == {"HELD"}
    assert "moe-m8: 4.00x, moe-m16: 4.00x, moe-m32: > 3.60x" in s.verdicts[0].detail
    assert "| circle d=1 | 16 | moe-m8 | 2 | 1.29e-03 [1.20e-03, 1.38e-03] | 208 [208, 208] |" \
        in _text(s)


def test_depth_compares_pieces_with_E_to_the_L(sections):
    s = sections["depth"]
    assert [v.status for v in s.verdicts] == ["HELD"] * 6
    assert s.verdicts[2].detail == "pieces separated 81 vs 8"
    assert s.verdicts[5].detail == "pieces separated >= regions: 1 of 1 cells (81)"
    assert "| shallow L=3 | 2 |" in _text(s)


def test_gating_lowdim_and_intrinsic_verdicts(sections):
    match, beats = sections["gating"].verdicts
    assert match.status == "HELD" and "= 1.00x (held within 2x)" in match.detail
    assert beats.status == "HELD" and "2.15e-04 vs 1.07e-02" in beats.detail
    lowdim = sections["lowdim-experts"].verdicts
    assert [v.status for v in lowdim] == ["HELD", "HELD"]
    assert lowdim[0].detail.startswith("D=256: test MSE 1.07e-04 vs 1.07e-04")
    assert "parameters 2,328 vs 16,516" in lowdim[0].detail
    grows, flat = sections["intrinsic"].verdicts
    assert grows.status == "HELD" and "+4.10 [+3.21, +4.98]" in grows.detail
    assert flat.status == "HELD" and "max/min 1.00" in flat.detail


def test_every_study_has_a_figure_and_they_draw(sections):
    names = {n: [f.name for f in s.figures] for n, s in sections.items()}
    assert names == {"dense-vs-moe": ["dense-vs-moe-circle-d-1"], "depth": ["depth-pieces"],
                     "gating": ["gating-test-mse"], "lowdim-experts": ["lowdim-experts"],
                     "intrinsic": ["intrinsic-d", "intrinsic-D"]}
    for spec in (f for s in sections.values() for f in s.figures):
        buf = io.BytesIO()
        spec.make().savefig(buf, format="png")
        assert buf.getvalue().startswith(PNG_MAGIC)


def test_unregistered_experiments_get_the_generic_table(study_store):
    section = build_section("my-sweep", study_store.runs("gating"))
    assert section.claim.startswith("(not a registered experiment")
    assert "| 1 layer, MLP router | 2 | 2.15e-04 [2.00e-04, 2.30e-04] |" in _text(section)
    assert [f.name for f in section.figures] == ["my-sweep-test-mse"]
