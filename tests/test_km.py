"""Kaplan-Meier plot of predicted risk groups (healnet/report.py, `healnet km-plot`)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from healnet.cli import main
from healnet.report import km_curve, load_predictions, logrank, median_survival, risk_groups
from healnet.runs import run_of


def write_predictions(root: Path, model: str, fold: int, risk, time, event) -> Path:
    path = root / "models" / model / f"fold{fold}" / "predictions.tsv"
    path.parent.mkdir(parents=True)
    n = len(risk)
    pd.DataFrame(
        {
            "case_id": [f"{model}-{fold}-{i}" for i in range(n)],
            "risk": risk,
            "surv_0": 0.5,
            "modalities": "omics",
            "event": event,
            "time": time,
            "bin": 0,
        }
    ).to_csv(path, sep="\t", index=False)
    return path


def test_run_of_parses_model_and_fold_and_rejects_other_paths():
    assert run_of("results/demo/models/healnet_wsi/fold3/predictions.tsv") == ("healnet_wsi", 3)
    with pytest.raises(ValueError, match="fold<k>/predictions.tsv"):
        run_of("results/demo/predictions.tsv")


def test_km_curve_and_median_match_hand_computation():
    # times 1..4, the event at 3 censored: S = 1, 0.75 (t1), 0.5 (t2), 0.5 (t3 censored), 0 (t4)
    t, s = km_curve(np.array([1.0, 2.0, 3.0, 4.0]), np.array([1, 1, 0, 1]))
    assert list(t) == [0.0, 1.0, 2.0, 3.0, 4.0]
    assert np.allclose(s, [1.0, 0.75, 0.5, 0.5, 0.0])
    assert median_survival(np.array([1.0, 2.0, 3.0, 4.0]), np.array([1, 1, 0, 1])) == 2.0
    assert math.isnan(median_survival(np.array([1.0, 2.0]), np.array([0, 0])))


def test_groups_split_at_each_folds_own_median():
    # fold 1 risks are on another scale (x100): a pooled median would put all of fold 1 in `high`
    pred = pd.DataFrame(
        {
            "model": "m",
            "fold": [0] * 4 + [1] * 4,
            "risk": [0.1, 0.2, 0.3, 0.4, 10.0, 20.0, 30.0, 40.0],
        }
    )
    groups = risk_groups(pred)["group"].tolist()
    assert groups == ["low", "low", "high", "high"] * 2


def test_logrank_separates_planted_groups_and_is_nan_for_one_group():
    rng = np.random.default_rng(0)
    time = np.concatenate([rng.exponential(5, 40), rng.exponential(50, 40)])
    event = np.ones(80, int)
    group = np.array(["high"] * 40 + ["low"] * 40)
    chi2, p = logrank(time, event, group)
    assert chi2 > 20 and p < 1e-4
    assert all(math.isnan(v) for v in logrank(time, event, np.array(["low"] * 80)))


def test_km_plot_command_writes_figure_and_stats(tmp_path):
    rng = np.random.default_rng(1)
    paths = []
    for fold in range(2):
        risk = rng.normal(size=30) + 5 * fold  # different scale per fold
        time = np.exp(-(risk - 5 * fold)) * 20 + rng.uniform(0, 1, 30)  # high risk -> short survival
        event = (rng.uniform(size=30) < 0.7).astype(int)
        paths.append(write_predictions(tmp_path, "healnet", fold, risk, time, event))
        paths.append(write_predictions(tmp_path, "snn", fold, rng.normal(size=30), time, event))
    plot, stats = tmp_path / "km.png", tmp_path / "km.tsv"
    rc = main(
        ["km-plot", "--predictions", *map(str, paths), "--plot", str(plot), "--stats", str(stats), "--title", "demo"]
    )
    assert rc == 0
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and plot.stat().st_size > 10_000
    table = pd.read_csv(stats, sep="\t").set_index("model")
    assert list(table.index) == ["healnet", "snn"]
    assert table.loc["healnet", "n"] == 60 and table.loc["healnet", "n_low"] == table.loc["healnet", "n_high"] == 30
    assert table.loc["healnet", "p_value"] < 1e-3  # planted: risk orders survival within each fold
    assert table.loc["healnet", "median_months_low"] > table.loc["healnet", "median_months_high"]
    assert table.loc["snn", "p_value"] > table.loc["healnet", "p_value"]  # random risk separates less


def test_km_plot_names_missing_predictions_file(tmp_path, capfd):
    missing = tmp_path / "models" / "healnet" / "fold0" / "predictions.tsv"
    rc = main(
        [
            "km-plot",
            "--predictions",
            str(missing),
            "--plot",
            str(tmp_path / "km.png"),
            "--stats",
            str(tmp_path / "s.tsv"),
        ]
    )
    assert rc == 1
    err = capfd.readouterr().err
    assert str(missing) in err and "healnet train" in err and "Traceback" not in err
    with pytest.raises(ValueError, match="missing columns"):
        bad = tmp_path / "models" / "x" / "fold0" / "predictions.tsv"
        bad.parent.mkdir(parents=True)
        bad.write_text("case_id\trisk\nA\t1\n")
        load_predictions([bad])


def test_report_table_renders_tsv_values_as_html(tmp_path, capfd):
    tsv = tmp_path / "cindex.tsv"
    pd.DataFrame({"model": ["healnet", "healnet"], "fold": ["0", "mean"], "cindex": [0.612345, math.nan]}).to_csv(
        tsv, sep="\t", index=False
    )
    out = tmp_path / "report" / "cindex.html"
    assert main(["report-table", "--tsv", str(tsv), "--html", str(out), "--title", "demo"]) == 0
    page = out.read_text()
    assert "<title>demo: cindex</title>" in page and "<table" in page
    assert "<td>0.6123</td>" in page and "<td>mean</td>" in page  # 4 significant digits, NaN empty
    assert main(["report-table", "--tsv", str(tsv), str(tsv), "--html", str(out)]) == 1
    assert "give one HTML path per table" in capfd.readouterr().err
