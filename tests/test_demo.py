"""The synthetic demo cohort: real slide files, TCGA-format table, missing modalities, determinism,
and the planted signal (measured from survival, omics and pixels)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from healnet.cli import main
from healnet.config import Demo
from healnet.demo.cohort import META_COLUMNS, simulate_cohort
from healnet.demo.slides import nuclear_fraction
from healnet.sheets import read_sample_sheet

SMALL = Demo(n_patients=10, seed=3, slide_size_um=[800.0, 600.0], n_rnaseq=12, n_cnv=4, n_mut=4)


def _generate(outdir: Path, cfg: Demo) -> None:
    assert main(["demo-cohort", "--outdir", str(outdir), "--params", cfg.model_dump_json()]) == 0


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> Path:
    outdir = tmp_path_factory.mktemp("demo") / "data" / "demo"
    _generate(outdir, SMALL)
    return outdir


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_slides_open_with_openslide_at_their_mpp(small):
    import openslide

    sheet = read_sample_sheet(small / "slides.tsv")  # paths exist, ids unique
    assert set(Path(p).suffix for p in sheet["path"]) == {".svs", ".tiff"}
    for path in sheet["path"]:
        with openslide.OpenSlide(path) as slide:
            props = slide.properties
            if path.endswith(".svs"):
                assert props["openslide.vendor"] == "aperio"
                assert float(props["openslide.mpp-x"]) == pytest.approx(0.25)
                assert props["openslide.objective-power"] == "40"
                assert slide.dimensions == (3200, 2400)
            else:
                assert props["openslide.vendor"] == "generic-tiff"
                assert float(props["openslide.mpp-x"]) == pytest.approx(0.5)
                assert float(props["openslide.mpp-y"]) == pytest.approx(0.5)
                assert slide.dimensions == (1600, 1200)
            assert slide.level_count >= 3
            # Thumbnail at ~8 um/px from the pyramid: white glass around pink/purple tissue.
            level = slide.get_best_level_for_downsample(16.0 / float(props["openslide.mpp-x"]))
            rgb = np.asarray(slide.read_region((0, 0), level, slide.level_dimensions[level]).convert("RGB"))
            corners = np.concatenate([rgb[:3, :3], rgb[:3, -3:], rgb[-3:, :3], rgb[-3:, -3:]]).reshape(-1, 3)
            assert corners.min() >= 235, f"{path}: background not white"
            tissue = rgb.min(axis=-1) < 215
            assert 0.05 < tissue.mean() < 0.6, f"{path}: tissue fraction {tissue.mean():.2f}"
            pink = tissue & (rgb[..., 0] > 200) & (rgb[..., 1] < 190)
            assert pink.sum() > 0.2 * tissue.sum(), f"{path}: no pink stroma"


def test_table_is_in_tcga_format(small):
    table = pd.read_csv(small / "clinical_omics.csv", dtype={"slide_id": str})
    assert list(table.columns[:10]) == ["Unnamed: 0"] + META_COLUMNS
    omic = list(table.columns[10:])
    assert omic == [c for t in ("rnaseq", "cnv", "mut") for c in omic if c.endswith(f"_{t}")]
    assert sum(c.endswith("_rnaseq") for c in omic) == 12
    assert set(table.filter(like="_cnv").stack().dropna().unique()) <= {-2, -1, 0, 1, 2}
    assert set(table.filter(like="_mut").stack().dropna().unique()) == {0, 1}
    assert table["censorship"].isin([0, 1]).all()
    assert table["survival_months"].between(1, 150).all()
    assert table["case_id"].str.fullmatch(r"DEMO-\d{4}").all()
    # One row per slide plus one per slide-less patient; the sample sheet lists exactly those slides.
    sheet = pd.read_csv(small / "slides.tsv", sep="\t")
    assert list(sheet.columns) == ["case_id", "slide_id", "path"]
    assert sorted(sheet["slide_id"]) == sorted(table["slide_id"].dropna())
    assert all(p == f"{small}/slides/{s}.{p.rsplit('.', 1)[1]}" for s, p in zip(sheet["slide_id"], sheet["path"]))
    truth = pd.read_csv(small / "truth.tsv", sep="\t")
    assert list(truth.columns) == ["case_id", "risk_wsi", "risk_omics", "risk"]
    assert np.allclose(truth["risk"], truth["risk_wsi"] + truth["risk_omics"], atol=1e-5)
    assert sorted(truth["case_id"]) == sorted(table["case_id"].unique())


def test_missing_modalities_are_present_and_never_both(small):
    table = pd.read_csv(small / "clinical_omics.csv", dtype={"slide_id": str})
    omics = table.filter(regex="_(rnaseq|cnv|mut)$")
    no_omics = table.loc[omics.isna().all(axis=1), "case_id"].unique()
    assert omics.isna().any(axis=1).equals(omics.isna().all(axis=1))  # all or nothing per row
    no_slide = table.loc[table["slide_id"].isna(), "case_id"]
    slides_per_case = table.dropna(subset=["slide_id"]).groupby("case_id").size()
    assert len(no_slide) == 1 and len(no_omics) == 1 and (slides_per_case == 2).sum() == 2
    assert not set(no_slide) & set(no_omics)
    assert table["case_id"].value_counts().loc[no_slide].eq(1).all()
    two = slides_per_case[slides_per_case == 2].index
    rows = table[table["case_id"].isin(two)].drop(columns=["Unnamed: 0", "slide_id"])
    assert (rows.groupby("case_id").nunique(dropna=False) == 1).all().all()  # slides of a patient agree


def test_deterministic_from_seed(small, tmp_path):
    again = tmp_path / "again"
    _generate(again, SMALL)
    assert (again / "clinical_omics.csv").read_bytes() == (small / "clinical_omics.csv").read_bytes()
    assert (again / "truth.tsv").read_bytes() == (small / "truth.tsv").read_bytes()
    names = sorted(p.name for p in (small / "slides").iterdir())
    assert names == sorted(p.name for p in (again / "slides").iterdir())
    assert all(_sha(small / "slides" / n) == _sha(again / "slides" / n) for n in names)
    # The table needs no slides: simulating alone gives the same rows; another seed differs.
    same = simulate_cohort(SMALL, small).table
    written = pd.read_csv(small / "clinical_omics.csv", index_col=0, dtype={"slide_id": str})
    assert same["survival_months"].tolist() == written["survival_months"].tolist()
    other = simulate_cohort(SMALL.model_copy(update={"seed": 4}), small).table
    assert other["survival_months"].tolist() != same["survival_months"].tolist()


def test_planted_signal_patient_level():
    from sksurv.metrics import concordance_index_censored

    cohort = simulate_cohort(Demo(n_patients=200, seed=0))  # no slides written
    p = cohort.patients
    event, months = p["censorship"].to_numpy() == 0, p["survival_months"].to_numpy()

    def cindex(col: str) -> float:
        return concordance_index_censored(event, months, p[col].to_numpy())[0]

    # demo.signal_strength 2: the full risk orders survival much better than either half (room for fusion)
    full, wsi, omic = cindex("risk"), cindex("risk_wsi"), cindex("risk_omics")
    assert full > 0.85
    assert 0.65 < wsi < full - 0.08 and 0.65 < omic < full - 0.08
    weak = simulate_cohort(Demo(n_patients=200, seed=0, signal_strength=1.0)).patients
    assert (
        concordance_index_censored(
            weak["censorship"].to_numpy() == 0, weak["survival_months"].to_numpy(), weak["risk"].to_numpy()
        )[0]
        < full - 0.05
    )
    assert 0.3 <= p["censorship"].mean() <= 0.6
    assert months.min() >= 1.0 and months.max() <= 150.0 and np.median(months) > 10
    assert abs(np.corrcoef(p["risk_wsi"], p["risk_omics"])[0, 1]) < 0.2
    # Omics carry risk_omics only, through the planted features; everything else is noise.
    omics = cohort.table.drop_duplicates("case_id").set_index("case_id").filter(regex="_(rnaseq|cnv|mut)$")
    omics = omics.astype(float).loc[p["case_id"]]
    has = omics.notna().all(axis=1).to_numpy()
    assert has.sum() == 180  # frac_no_omics 0.1
    corr_omics = omics[has].corrwith(
        pd.Series(p["risk_omics"].to_numpy()[has], index=omics.index[has]), method="spearman"
    )
    corr_wsi = omics[has].corrwith(pd.Series(p["risk_wsi"].to_numpy()[has], index=omics.index[has]), method="spearman")
    planted = list(cohort.planted["feature"])
    assert len(planted) == 5 and sum(f.endswith("_cnv") for f in planted) == 1
    assert corr_omics[planted].abs().min() > 0.5
    assert corr_omics.drop(planted).abs().max() < 0.25
    assert corr_wsi.abs().max() < 0.25
    assert np.sign(corr_omics[planted]).tolist() == np.sign(cohort.planted["loading"]).tolist()
    rna = omics.filter(like="_rnaseq")
    assert rna.max().max() > 50  # heavy outliers, as in TCGA rnaseq


def test_slide_signal_is_measurable_from_pixels(small):
    import openslide
    from scipy.stats import spearmanr

    sheet = pd.read_csv(small / "slides.tsv", sep="\t")
    risk = pd.read_csv(small / "truth.tsv", sep="\t").set_index("case_id")["risk_wsi"]
    fractions = []
    for path in sheet["path"]:
        with openslide.OpenSlide(path) as slide:  # ~1 um/px: level 1 of the SVS, level 1 of the TIFF
            level = slide.get_best_level_for_downsample(1.0 / float(slide.properties["openslide.mpp-x"]))
            rgb = np.asarray(slide.read_region((0, 0), level, slide.level_dimensions[level]).convert("RGB"))
        fractions.append(nuclear_fraction(rgb))
    rho = spearmanr(fractions, risk.loc[sheet["case_id"]].to_numpy()).statistic
    assert rho > 0.8, f"nuclear fraction vs risk_wsi: Spearman {rho:.2f}"
    assert max(fractions) > 2 * min(fractions)


def test_bad_params_fail_with_the_key(tmp_path, capsys):
    code = main(["demo-cohort", "--outdir", str(tmp_path / "x"), "--params", '{"n_patiens": 12}'])
    assert code == 1 and "n_patiens" in capsys.readouterr().err
    with pytest.raises(ValueError, match="frac_no_slide \\+ demo.frac_no_omics must be <= 1"):
        Demo(frac_no_slide=0.6, frac_no_omics=0.5)
    assert not (tmp_path / "x").exists()
