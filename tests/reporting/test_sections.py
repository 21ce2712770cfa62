"""Sections of moelab's own studies, built from fake runs whose answers are known, and the
fallback to the generic table."""

from __future__ import annotations

import io

import pytest

from moelab.reporting import build_section, report

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
    assert "| circle d=1 | 16 | moe-m8 | 208 | 1.29e-03 | 832 | 4.00 | 4 |" in _text(s)


def test_depth_compares_pieces_with_E_to_the_L(sections):
    s = sections["depth"]
    assert [v.status for v in s.verdicts] == ["HELD"] * 3
    assert s.verdicts[2].detail == "deep 81 of E^L = 81, shallow 8 (at most L*E = 12)"
    assert "| 3 | shallow | 1 x 9 | 27 |" in _text(s)


def test_gating_lowdim_and_intrinsic_verdicts(sections):
    gating = sections["gating"].verdicts[0]
    assert gating.status == "HELD" and "ratio 1.00" in gating.detail
    lowdim = sections["lowdim-experts"].verdicts
    assert [v.status for v in lowdim] == ["HELD", "HELD"]
    assert "D=256: error ratio 1.00, parameter ratio 0.141" in lowdim[0].detail
    grows, flat = sections["intrinsic"].verdicts
    assert grows.status == "HELD" and "d=3: 1.07e-02" in grows.detail
    assert flat.status == "HELD" and "over D = 4, 16, 32, 64, 256" in flat.detail


def test_study_figures_draw(sections):
    specs = [f for s in sections.values() for f in s.figures]
    assert {f.name for f in specs} == {"dense-vs-moe-circle-d-1", "depth-pieces", "intrinsic"}
    for spec in specs:
        buf = io.BytesIO()
        spec.make().savefig(buf, format="png")
        assert buf.getvalue().startswith(PNG_MAGIC)


def test_a_section_that_cannot_be_built_falls_back_to_the_generic_table(study_store, monkeypatch):
    def broken(runs):
        raise KeyError("model")

    monkeypatch.setitem(report.SECTION_BUILDERS, "gating", broken)
    section = build_section("gating", study_store.runs("gating"))
    assert "could not be built from these runs (KeyError: 'model')" in section.notes[0]
    assert section.tables[0].header == ("model", "runs", "test MSE", "test sup error")
    assert section.claim.startswith("A nonlinear router")  # still the registry's claim


def test_unregistered_experiments_get_the_generic_table(study_store):
    section = build_section("my-sweep", study_store.runs("gating"))
    assert section.claim.startswith("(not a registered experiment")
    assert "| 1 layer, MLP router | 2 | 2.15e-04 [2.00e-04, 2.30e-04] |" in _text(section)
