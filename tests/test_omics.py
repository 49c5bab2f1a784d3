"""Omics stage: reading/validating TCGA tables, the cohort matrix, the per-fold transform."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from healnet.cli import main
from healnet.config import Omics
from healnet.omics.preprocess import build_omics, fit_omics_transform, load_omics
from healnet.omics.tables import read_omics_table
from healnet.survival.splits import fold_ids, read_split_file

# Patients and omic features by type of the real tables (../shared/data/tcga/README.md).
REAL = {
    "blca": (373, {"rnaseq": 1554, "cnv": 256, "mut": 371}),
    "brca": (956, {"rnaseq": 1558, "cnv": 1333, "mut": 21}),
    "kirp": (260, {"rnaseq": 1557, "mut": 20}),
    "ucec": (480, {"cnv": 5, "mut": 1406}),
}


def tiny_table(n: int = 12, seed: int = 0) -> pd.DataFrame:
    """A TCGA-format table: patient P0 has two slides, P1 none, P2 no omics (all cells empty)."""
    rng = np.random.default_rng(seed)
    ids = [f"TCGA-XX-{i:04d}" for i in range(n)]
    rows = pd.DataFrame(
        {
            "Unnamed: 0": range(n),
            "case_id": ids,
            "slide_id": [f"{c}-01Z-00-DX1.svs" for c in ids],
            "age": rng.integers(40, 80, n),
            "site": "XX",
            "survival_months": rng.uniform(1, 100, n).round(2),
            "censorship": rng.integers(0, 2, n),
            "is_female": rng.integers(0, 2, n),
            "oncotree_code": "BLCA",
            "train": 1.0,
            "A_rnaseq": rng.normal(size=n).round(3),
            "B_rnaseq": rng.normal(size=n).round(3),
            "C_rnaseq": 0.5,  # constant over the cohort: dropped
            "A_cnv": rng.integers(-2, 3, n),
            "A_mut": rng.integers(0, 2, n),
            "B_mut": rng.integers(0, 2, n),
        }
    )
    rows.loc[1, "slide_id"] = np.nan
    rows.loc[2, ["A_rnaseq", "B_rnaseq", "C_rnaseq", "A_cnv", "A_mut", "B_mut"]] = np.nan
    second = rows.iloc[[0]].copy()
    second["slide_id"] = f"{ids[0]}-01Z-00-DX2.svs"
    return pd.concat([rows, second], ignore_index=True)


def write(df: pd.DataFrame, path) -> str:
    df.to_csv(path, index=False)
    return str(path)


@pytest.fixture(scope="module")
def real_omics(shared_data, tmp_path_factory):
    """Each real cohort's omics matrix, built once for the module."""
    out = {}
    for cohort in REAL:
        path = tmp_path_factory.mktemp(cohort) / "omics.tsv.gz"
        summary = build_omics(shared_data / "tcga" / cohort / "clinical_omics.csv.zip", path, Omics())
        out[cohort] = (summary, path)
    return out


@pytest.mark.parametrize("cohort", sorted(REAL))
def test_real_tables_patients_and_features_by_type(real_omics, cohort):
    n_patients, by_type = REAL[cohort]
    summary, path = real_omics[cohort]
    assert summary["patients"] == summary["with_omics"] == n_patients
    assert summary["features"] == by_type
    df = load_omics(path)
    assert df.shape == (n_patients, sum(by_type.values()))
    assert df.index.is_unique and (df.index.str.len() == 12).all()
    assert not df.isna().any().any()


@pytest.mark.parametrize("cohort", ["blca", "kirp"])
def test_real_transform_fitted_on_fold0_train(real_omics, shared_data, cohort):
    df = load_omics(real_omics[cohort][1])
    train, test = read_split_file(shared_data / "tcga" / cohort / "splits" / "splits_0.csv", df.index)
    tr = fit_omics_transform(df, train, Omics())
    arrays = tr.transform(df.loc[train])
    rna = arrays["rnaseq"]
    assert rna.dtype == np.float32 and np.abs(rna).max() <= 5.0
    # z-scored on the winsorised training values: mean ~0, sd a little below 1 (clipped tails)
    assert np.abs(rna.mean(axis=0)).max() < 0.05
    assert 0.85 < np.median(rna.std(axis=0)) <= 1.0 + 1e-5
    assert set(np.unique(arrays["mut"])) == {0.0, 1.0}  # mutations stay 0/1
    # features constant on the training split are dropped; the names say which remain
    n_rna = REAL[cohort][1]["rnaseq"] - len(tr.dropped["rnaseq"])
    assert rna.shape == (len(train), n_rna) == (len(train), len(tr.feature_names["rnaseq"]))
    assert tr.modality(tr.transform(df.loc[test]), "omics").shape[1] == len(tr.modality_features("omics"))
    if cohort == "kirp":
        # 2 genes constant on these 208 patients, 6 more constant once winsorised (one outlier each)
        assert "cnv" not in arrays and len(tr.dropped["rnaseq"]) == 8


def test_tiny_table_patients_missing_omics_and_slides(tmp_path):
    table = write(tiny_table(), tmp_path / "t.csv")
    summary = build_omics(table, tmp_path / "omics.tsv.gz", Omics())
    assert summary == {
        "rows": 13,
        "patients": 12,
        "with_omics": 11,
        "omics_missing": 1,
        "features": {"rnaseq": 2, "cnv": 1, "mut": 2},
        "dropped_constant": 1,
    }
    df = load_omics(tmp_path / "omics.tsv.gz")
    assert "TCGA-XX-0002" not in df.index  # omics-missing: left out, not imputed
    assert "TCGA-XX-0001" in df.index  # no slide, but omics
    assert list(df.columns) == ["A_rnaseq", "B_rnaseq", "A_cnv", "A_mut", "B_mut"]


def test_transform_uses_training_statistics_only():
    rng = np.random.default_rng(1)
    df = pd.DataFrame(
        {"G1_rnaseq": rng.normal(3, 2, 40), "G2_rnaseq": rng.normal(0, 1, 40), "G1_cnv": rng.integers(-2, 3, 40)},
        index=[f"p{i}" for i in range(40)],
    )
    train = list(df.index[:30])
    cfg = Omics(rnaseq_winsor_quantile=0.0)
    base = fit_omics_transform(df, train, cfg).transform(df.loc[train])
    expected = (df.loc[train, "G1_rnaseq"] - df.loc[train, "G1_rnaseq"].mean()) / df.loc[train, "G1_rnaseq"].std(ddof=0)
    np.testing.assert_allclose(base["rnaseq"][:, 0], expected.clip(-5, 5), rtol=1e-5)
    np.testing.assert_array_equal(base["cnv"][:, 0], df.loc[train, "G1_cnv"])
    # extreme values in test patients change nothing for the training patients
    shifted = df.copy()
    shifted.loc[df.index[30:], "G1_rnaseq"] = 1e4
    again = fit_omics_transform(shifted, train, cfg).transform(shifted.loc[train])
    np.testing.assert_array_equal(base["rnaseq"], again["rnaseq"])
    assert fit_omics_transform(shifted, train, cfg).transform(shifted)["rnaseq"][30:, 0].tolist() == [5.0] * 10


def test_outlier_is_winsorised_before_scaling():
    values = np.r_[np.linspace(-1, 1, 299), 14000.0]
    df = pd.DataFrame({"G_rnaseq": values}, index=[f"p{i}" for i in range(300)])
    out = fit_omics_transform(df, df.index, Omics(rnaseq_winsor_quantile=0.01)).transform(df)["rnaseq"][:, 0]
    # without winsorising, the outlier's sd (~800) would squash the other 299 values to ~0
    assert out[:299].std() > 0.9
    assert out[299] == pytest.approx(out[:299].max(), abs=0.01)
    plain = fit_omics_transform(df, df.index, Omics(rnaseq_winsor_quantile=0.0)).transform(df)["rnaseq"][:, 0]
    assert plain[:299].std() < 0.01


def test_missing_values_filled_with_train_mean_and_indicated():
    df = pd.DataFrame(
        {"G_rnaseq": [1.0, 2.0, np.nan, 3.0, 100.0], "M_mut": [1.0, np.nan, 0.0, 1.0, 0.0]},
        index=list("abcde"),
    )
    tr = fit_omics_transform(df, list("abcd"), Omics(missing_indicator=True, rnaseq_winsor_quantile=0.0))
    assert tr.feature_names == {"rnaseq": ["G_rnaseq", "G_rnaseq_missing"], "mut": ["M_mut", "M_mut_missing"]}
    out = tr.transform(df)
    assert out["rnaseq"][2].tolist() == [0.0, 1.0]  # train mean 2 -> z 0, indicator 1
    assert out["mut"][:, 0].tolist() == pytest.approx([1.0, 2 / 3, 0.0, 1.0, 0.0])
    assert out["mut"][:, 1].tolist() == [0.0, 1.0, 0.0, 0.0, 0.0]


def test_clinical_features_optional(tmp_path):
    table = write(tiny_table(), tmp_path / "t.csv")
    build_omics(table, tmp_path / "plain.tsv.gz", Omics())
    assert not any(c.endswith("_clinical") for c in load_omics(tmp_path / "plain.tsv.gz").columns)
    cfg = Omics(clinical_features=True)
    build_omics(table, tmp_path / "clin.tsv.gz", cfg)
    df = load_omics(tmp_path / "clin.tsv.gz")
    tr = fit_omics_transform(df, df.index[:8], cfg)
    assert tr.feature_names["clinical"] == ["age_clinical", "is_female_clinical"]
    clin = tr.transform(df.loc[df.index[:8]])["clinical"]
    assert clin[:, 0].mean() == pytest.approx(0.0, abs=1e-5)  # age z-scored
    assert set(clin[:, 1]) <= {0.0, 1.0}  # sex stays 0/1
    with pytest.raises(ValueError, match="no \\*_clinical columns"):
        fit_omics_transform(load_omics(tmp_path / "plain.tsv.gz"), df.index[:8], cfg)


@pytest.mark.parametrize(
    "edit, message",
    [
        (
            lambda t: t.assign(A_cnv=t["A_cnv"].astype(object).where(t.index != 4, "amp")),
            r"non-numeric omic value\(s\) in column `A_cnv`, line\(s\) 6 \(e.g. 'amp'\)",
        ),
        (
            lambda t: t.drop(columns=[c for c in t.columns if c[-4:] in ("_mut", "_cnv") or "rnaseq" in c]),
            r"no omic columns",
        ),
        (lambda t: t.assign(purity=0.5), r"column\(s\) \['purity'\] are neither metadata nor omic features"),
        (
            lambda t: t.assign(A_mut=t["A_mut"].where(t.index != 12, 1 - t["A_mut"].iloc[0])),
            r"patient TCGA-XX-0000 \(lines 2, 14\) in column\(s\) A_mut",
        ),
        (lambda t: t.assign(case_id=t["case_id"].where(t.index != 3, None)), r"empty `case_id` in line\(s\) 5"),
    ],
    ids=["non-numeric", "no-omics", "unknown-column", "disagreeing-duplicate", "empty-case-id"],
)
def test_bad_tables_name_file_column_rows(tmp_path, edit, message):
    path = write(edit(tiny_table()), tmp_path / "bad.csv")
    with pytest.raises(ValueError, match=message) as err:
        read_omics_table(path, Omics())
    assert str(path) in str(err.value)


def test_cli_reports_errors_without_traceback(tmp_path, capfd):
    assert main(["omics", "--table", str(tmp_path / "absent.csv"), "--output", str(tmp_path / "o.tsv.gz")]) == 1
    err = capfd.readouterr().err
    assert "absent.csv does not exist" in err and "Traceback" not in err
    table = write(tiny_table(), tmp_path / "t.csv")
    params = '{"omic_types": ["mut"], "clinical_features": true}'
    assert main(["omics", "--table", table, "--output", str(tmp_path / "o.tsv.gz"), "--params", params]) == 0
    assert list(load_omics(tmp_path / "o.tsv.gz").columns) == ["A_mut", "B_mut", "age_clinical", "is_female_clinical"]


def test_fold_ids_helper_and_transform_needs_training_omics(tmp_path):
    df = pd.DataFrame({"G_mut": [0.0, 1.0]}, index=["a", "b"])
    fold = pd.DataFrame({"split": ["train", "test"]}, index=pd.Index(["x", "b"], name="case_id"))
    with pytest.raises(ValueError, match="none of the 1 training patients has omics"):
        fit_omics_transform(df, fold_ids(fold, "train"), Omics())


def test_snakemake_omics_labels_splits(tmp_path, snakemake_in):
    """The three rules for real: a generated-folds cohort and one with provided splits_{k}.csv."""
    table = tiny_table(n=30)
    table.to_csv(tmp_path / "table.csv", index=False)
    ids = list(pd.unique(table["case_id"]))
    (tmp_path / "splits").mkdir()
    for k in range(2):
        test, train = ids[k::2], [c for c in ids if c not in ids[k::2]]
        pd.DataFrame({"train": pd.Series(train), "val": pd.Series(test)}).to_csv(
            tmp_path / "splits" / f"splits_{k}.csv"
        )
    (tmp_path / "extra.yaml").write_text(
        "cohorts:\n"
        "  tiny: {clinical_omics: table.csv}\n"
        "  given: {clinical_omics: table.csv, splits: splits}\n"
        "splits: {n_folds: 3, inner_val_fraction: 0.2}\n"
    )
    targets = [f"results/tiny/splits/fold{k}.tsv" for k in range(3)] + ["results/tiny/omics.tsv.gz"]
    targets += [f"results/given/splits/fold{k}.tsv" for k in range(2)]
    result = snakemake_in(tmp_path, *targets, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    omics = load_omics(tmp_path / "results/tiny/omics.tsv.gz")
    labels = pd.read_csv(tmp_path / "results/tiny/labels.tsv", sep="\t")
    assert list(labels.columns) == ["case_id", "survival_months", "censorship", "event", "bin"]
    assert len(labels) == 30 and len(omics) == 29 and "TCGA-XX-0002" in set(labels["case_id"])
    held_out = []
    for k in range(3):
        fold = pd.read_csv(tmp_path / f"results/tiny/splits/fold{k}.tsv", sep="\t")
        assert fold["split"].value_counts().to_dict() == {"train": 16, "test": 10, "val": 4}
        held_out += fold.loc[fold["split"] == "test", "case_id"].tolist()
    assert sorted(held_out) == sorted(ids)
    given = pd.read_csv(tmp_path / "results/given/splits/fold1.tsv", sep="\t").set_index("case_id")["split"]
    assert sorted(given[given == "test"].index) == sorted(ids[1::2])
    assert "healnet.survival.labels" in (tmp_path / "logs/tiny/labels.log").read_text()
    # a second run has nothing to do: outputs are complete and up to date
    again = snakemake_in(tmp_path, *targets, "--dry-run", timeout=300)
    assert "Nothing to be done" in again.stdout + again.stderr
