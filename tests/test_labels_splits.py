"""Survival labels (bins) and cross-validation splits, on the real tables and on bad inputs."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from healnet.cli import main
from healnet.config import Labels, Splits
from healnet.omics.tables import read_survival
from healnet.survival.labels import assign_bins, bin_edges, bins_for_fold, build_labels, load_labels, make_labels
from healnet.survival.splits import build_splits, fold_ids, load_fold, make_folds

# patients, events, inner bin edges, fold-0 train / held-out sizes (../shared/data/tcga/README.md)
REAL = {
    "blca": (373, 169, (7.6, 13.6, 21.8), (298, 75)),
    "brca": (956, 130, (24.0, 46.0, 77.9), (764, 192)),
    "kirp": (260, 40, (11.0, 20.1, 45.7), (208, 52)),
    "ucec": (480, 75, (12.1, 23.5, 33.9), (384, 96)),
}


def survival_table(path, months, censorship, ids=None) -> str:
    """A minimal TCGA-format table: case_id, survival, censorship and one omic column."""
    ids = ids or [f"TCGA-XX-{i:04d}" for i in range(len(months))]
    pd.DataFrame({"case_id": ids, "survival_months": months, "censorship": censorship, "A_mut": 0}).to_csv(
        path, index=False
    )
    return str(path)


def labels_frame(n: int = 60, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    survival = pd.DataFrame(
        {"survival_months": rng.exponential(30, n).round(2), "censorship": (rng.random(n) < 0.5).astype(int)},
        index=pd.Index([f"P{i:03d}" for i in range(n)], name="case_id"),
    )
    labels, _ = make_labels(survival, Labels())
    return labels.set_index("case_id")


@pytest.mark.parametrize("cohort", sorted(REAL))
def test_real_labels_and_provided_folds(shared_data, tmp_path, cohort):
    n_patients, n_events, inner, (n_train, n_test) = REAL[cohort]
    root = shared_data / "tcga" / cohort
    summary = build_labels(root / "clinical_omics.csv.zip", tmp_path / "labels.tsv", Labels())
    assert summary["patients"] == n_patients and summary["events"] == n_events
    assert summary["edges"][1:-1] == pytest.approx(inner, abs=0.06)
    labels = load_labels(tmp_path / "labels.tsv")
    assert list(labels.columns) == ["survival_months", "censorship", "event", "bin"]
    assert (labels["event"] == 1 - labels["censorship"]).all()
    assert sorted(labels["bin"].unique()) == [0, 1, 2, 3]
    # uncensored patients fill the 4 bins about equally (quartiles of their times)
    per_bin = labels.loc[labels["event"] == 1, "bin"].value_counts()
    assert per_bin.max() - per_bin.min() <= 2
    files = [root / "splits" / f"splits_{k}.csv" for k in range(5)]
    outputs = {k: tmp_path / f"fold{k}.tsv" for k in range(5)}
    build_splits(tmp_path / "labels.tsv", outputs, Splits(), files)
    fold0 = load_fold(outputs[0])
    assert (len(fold_ids(fold0, "train")), len(fold_ids(fold0, "test")), len(fold_ids(fold0, "val"))) == (
        n_train,
        n_test,
        0,
    )
    tests = [set(fold_ids(load_fold(p), "test")) for p in outputs.values()]
    assert set.union(*tests) == set(labels.index) and sum(map(len, tests)) == n_patients


def test_bins_follow_the_published_convention():
    times = np.array([1.0, 2.0, 3.0, 4.0, 5.0, 10.0, 20.0, 30.0, 40.0, 0.5])
    events = np.array([1, 1, 1, 1, 1, 0, 0, 0, 0, 0])
    edges = bin_edges(times, events, 4)
    # quartiles of the uncensored times 1..5; outer edges at min/max over all patients -/+ eps
    np.testing.assert_allclose(edges, [0.5 - 1e-6, 2.0, 3.0, 4.0, 40.0 + 1e-6])
    # left-closed: a time equal to an inner edge goes to the upper bin, as pd.cut(right=False)
    np.testing.assert_array_equal(assign_bins(times, edges), [0, 1, 2, 3, 3, 3, 3, 3, 3, 0])
    expected = pd.cut(times, bins=edges, right=False, labels=False)
    np.testing.assert_array_equal(assign_bins(times, edges), expected)
    # times beyond the outer edges (a test patient with train-fold edges) go to the end bins
    np.testing.assert_array_equal(assign_bins([0.0, 100.0], edges), [0, 3])
    with pytest.raises(ValueError, match="no uncensored patient"):
        bin_edges(times, np.zeros(10), 4)
    with pytest.raises(ValueError, match="not strictly increasing.*use fewer bins"):
        bin_edges(np.array([5.0, 5, 5, 5, 9]), np.array([1, 1, 1, 1, 0]), 4)


def test_bins_from_training_patients_only():
    labels = labels_frame()
    train = labels.index[:40]
    cohort_bins, cohort_edges = bins_for_fold(labels, train, Labels(edges_from="cohort"))
    assert cohort_bins.equals(labels["bin"])
    np.testing.assert_array_equal(cohort_edges, bin_edges(labels["survival_months"], labels["event"], 4))
    fold_bins, fold_edges = bins_for_fold(labels, train, Labels(edges_from="train"))
    tr = labels.loc[train]
    edges = bin_edges(tr["survival_months"], tr["event"], 4)
    np.testing.assert_array_equal(fold_edges, edges)
    np.testing.assert_array_equal(fold_bins, assign_bins(labels["survival_months"], edges))
    assert not fold_bins.equals(labels["bin"])


@pytest.mark.parametrize(
    "months, censorship, message",
    [
        ([10.0, None, 3.0], [0, 1, 0], r"`survival_months` is missing or negative in line\(s\) 3"),
        ([10.0, -2.0, 3.0], [0, 1, 0], r"`survival_months` is missing or negative in line\(s\) 3"),
        ([10.0, 2.0, 3.0], [0, 2, 0], r"`censorship` must be 0 .* line\(s\) 3 have 2"),
        ([10.0, 2.0, "x"], [0, 1, 0], r"non-numeric survival value\(s\) in column `survival_months`, line\(s\) 4"),
    ],
    ids=["missing-survival", "negative-survival", "censorship-2", "non-numeric-survival"],
)
def test_bad_survival_names_file_column_rows(tmp_path, months, censorship, message):
    path = survival_table(tmp_path / "t.csv", months, censorship)
    with pytest.raises(ValueError, match=message) as err:
        read_survival(path)
    assert str(path) in str(err.value)


def test_duplicate_patients_must_agree(tmp_path):
    ids = ["TCGA-XX-0001", "TCGA-XX-0002", "TCGA-XX-0001"]
    ok = read_survival(survival_table(tmp_path / "ok.csv", [5.0, 7.0, 5.0], [0, 1, 0], ids))
    assert ok.index.tolist() == ids[:2] and ok["censorship"].tolist() == [0, 1]
    path = survival_table(tmp_path / "bad.csv", [5.0, 7.0, 6.0], [0, 1, 0], ids)
    with pytest.raises(ValueError, match=r"patient TCGA-XX-0001 \(lines 2, 4\) in column\(s\) survival_months"):
        read_survival(path)


def test_generated_folds_are_stratified_disjoint_and_seeded():
    labels = labels_frame(n=100)
    folds = make_folds(labels, Splits(n_folds=5, seed=3))
    tests = [set(f.loc[f["split"] == "test", "case_id"]) for f in folds]
    assert [len(t) for t in tests] == [20] * 5
    assert set.union(*tests) == set(labels.index)
    for f, t in zip(folds, tests):
        assert set(f.loc[f["split"] == "train", "case_id"]) == set(labels.index) - t
        # stratified: each fold's events are within one of the cohort's rate
        assert abs(labels.loc[list(t), "event"].sum() - labels["event"].sum() / 5) <= 1
    again = make_folds(labels, Splits(n_folds=5, seed=3))
    assert all(a.equals(b) for a, b in zip(folds, again))
    other = make_folds(labels, Splits(n_folds=5, seed=4))
    assert not all(a.equals(b) for a, b in zip(folds, other))


def test_inner_validation_is_carved_from_train():
    labels = labels_frame(n=100)
    folds = make_folds(labels, Splits(n_folds=5, inner_val_fraction=0.2))
    for f in folds:
        counts = f["split"].value_counts().to_dict()
        assert counts == {"train": 64, "val": 16, "test": 20}
        assert f["case_id"].is_unique


def write_splits(folder, folds: list[tuple[list[str], list[str]]]) -> list[str]:
    """splits_{k}.csv in the provided format: train, val columns; val padded with empty cells."""
    folder.mkdir(exist_ok=True)
    paths = []
    for k, (train, val) in enumerate(folds):
        df = pd.DataFrame({"train": pd.Series(train), "val": pd.Series(val)})
        df.to_csv(folder / f"splits_{k}.csv")
        paths.append(str(folder / f"splits_{k}.csv"))
    return paths


def test_provided_splits_checked(tmp_path):
    labels = labels_frame(n=6)
    ids = list(labels.index)
    good = [(ids[2:], ids[:2]), (ids[:2] + ids[4:], ids[2:4]), (ids[:4], ids[4:])]
    folds = make_folds(labels, Splits(), write_splits(tmp_path / "good", good))
    assert folds[1].set_index("case_id")["split"].to_dict() == {
        "P000": "train",
        "P001": "train",
        "P002": "test",
        "P003": "test",
        "P004": "train",
        "P005": "train",
    }
    unknown = [(ids[2:] + ["TCGA-ZZ-0001", "TCGA-ZZ-0002"], ids[:2])] + good[1:]
    with pytest.raises(
        ValueError,
        match=r"splits_0.csv: column `train` names 2 patient\(s\) not in the cohort's "
        r"table: TCGA-ZZ-0001, TCGA-ZZ-0002 \(line\(s\) 6, 7\)",
    ):
        make_folds(labels, Splits(), write_splits(tmp_path / "unknown", unknown))
    both = [(ids[1:], ids[:2])] + good[1:]
    with pytest.raises(ValueError, match=r"splits_0.csv: patient\(s\) in both `train` and `val`: P001"):
        make_folds(labels, Splits(), write_splits(tmp_path / "both", both))
    overlap = [good[0], (ids[:1] + ids[4:], ids[1:4]), good[2]]
    with pytest.raises(ValueError, match=r"held-out patient\(s\) of fold 1 are also held out in fold 0 .*: P001"):
        make_folds(labels, Splits(), write_splits(tmp_path / "overlap", overlap))
    (tmp_path / "cols").mkdir()
    pd.DataFrame({"training": ids}).to_csv(tmp_path / "cols" / "splits_0.csv")
    with pytest.raises(ValueError, match=r"missing column\(s\) \['train', 'val'\]"):
        make_folds(labels, Splits(), [str(tmp_path / "cols" / "splits_0.csv")])


def test_cli_writes_one_fold_and_rejects_out_of_range(tmp_path, capfd):
    labels = labels_frame(n=30).reset_index()
    labels.to_csv(tmp_path / "labels.tsv", sep="\t", index=False)
    args = ["splits", "--labels", str(tmp_path / "labels.tsv"), "--params", '{"n_folds": 3}']
    assert main(args + ["--fold", "2", "--output", str(tmp_path / "fold2.tsv")]) == 0
    assert load_fold(tmp_path / "fold2.tsv")["split"].value_counts().to_dict() == {"train": 20, "test": 10}
    assert main(args + ["--fold", "3", "--output", str(tmp_path / "fold3.tsv")]) == 1
    assert "fold 3 requested but the cohort has 3 folds" in capfd.readouterr().err
    assert not (tmp_path / "fold3.tsv").exists()


def test_stage_files_missing_or_listing_a_patient_twice(tmp_path):
    from healnet.omics.preprocess import load_omics

    for load, rule in ((load_labels, "labels"), (load_fold, "splits"), (load_omics, "omics")):
        with pytest.raises(FileNotFoundError, match=f"run the `{rule}` rule"):
            load(tmp_path / "absent.tsv")
    (tmp_path / "fold0.tsv").write_text("case_id\tsplit\nA\ttrain\nA\ttest\n")
    with pytest.raises(ValueError, match=r"fold0.tsv: patient\(s\) listed twice: \['A'\]"):
        load_fold(tmp_path / "fold0.tsv")
    (tmp_path / "omics.tsv").write_text("case\tX_rnaseq\nA\t1\n")
    with pytest.raises(ValueError, match="no `case_id` column; regenerate it with `healnet omics`"):
        load_omics(tmp_path / "omics.tsv")
