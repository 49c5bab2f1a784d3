"""The paper's tables and figures: Table 1/2 and uplift on small synthetic c-index tables (values
asserted), the XOR baseline and the inspection on tiny trained models, the CLI, and one tiny
end-to-end `snakemake paper` on the demo cohort."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from healnet.cli import main
from healnet.config import Evaluation, Paper, Patching, Training, parse_config
from healnet.evaluate.cohort import CohortRuns
from healnet.evaluate.metrics import COLUMNS, MISSING_COLUMNS, with_summary
from healnet.inspection.patients import pick_patients
from healnet.io import write_tsv
from healnet.paper.cohort import given_modality, xor_baseline, xor_frame
from healnet.paper.figures import MEAN_GROUP, plot_uplift, uplift_table
from healnet.paper.inspection import inspect_cohort, top_patches
from healnet.paper.tables import load_published, markdown, published_key, table1, table2
from healnet.training.data import FoldData, SlideBag, WsiBags

MODS = {"snn": ["omics"], "abmil": ["wsi"], "healnet": ["wsi", "omics"], "porpoise": ["wsi", "omics"]}
PUB = {m: m for m in MODS}


def cindex_table(values: dict[str, list[float]]) -> pd.DataFrame:
    """A cindex.tsv table (healnet.evaluate format, summary rows included) from per-fold c-indices."""
    rows = [
        {"model": m, "fold": str(k), "cindex": c, "cindex_td": c, "ibs": 0.2, "n": 10, "events": 5, "excluded": 0}
        for m, cs in values.items()
        for k, c in enumerate(cs)
    ]
    return with_summary(pd.DataFrame(rows, columns=COLUMNS), ["model"])[COLUMNS].astype({"fold": str})


def missing_table(values: dict[tuple[str, str], list[float]]) -> pd.DataFrame:
    rows = [
        {
            "model": m,
            "scenario": s,
            "fold": str(k),
            "cindex": c,
            "cindex_td": c,
            "ibs": 0.2,
            "n": 10,
            "events": 5,
            "excluded": 0,
        }
        for (m, s), cs in values.items()
        for k, c in enumerate(cs)
    ]
    return with_summary(pd.DataFrame(rows, columns=MISSING_COLUMNS), ["model", "scenario"])[MISSING_COLUMNS]


COHORTS = {
    "demo": cindex_table({"snn": [0.6, 0.7], "abmil": [0.55, 0.65], "healnet": [0.7, 0.8], "porpoise": [0.66, 0.7]}),
    "blca": cindex_table({"snn": [0.5, 0.6], "abmil": [0.6, 0.62], "healnet": [0.63, 0.62], "porpoise": [0.6, 0.6]}),
}
KEYS = {"demo": "demo", "blca": "blca"}


def test_published_values_and_keys():
    pub = load_published()
    got = pub[(pub["source"] == "healnet") & (pub["table"] == "table1") & (pub["model"] == "snn")]
    assert dict(zip(got["cohort"], got["cindex"])) == {"blca": 0.606, "brca": 0.580, "kirp": 0.780, "ucec": 0.550}
    mcat = pub[pub["source"] == "mcat"].set_index("cohort")["cindex"].to_dict()
    assert mcat == {"blca": 0.541, "brca": 0.466, "ucec": 0.493}
    assert len(pub[(pub["table"] == "table2")]) == 8
    assert published_key("blca_wsi", "TCGA-BLCA") == "blca" and published_key("UCEC") == "ucec"


def test_table1_mean_std_folds_and_published():
    t = table1({c: (f"{c}.tsv", df) for c, df in COHORTS.items()}, ["snn", "abmil", "healnet"], MODS, PUB, KEYS)
    assert list(t["model"]) == ["snn", "abmil", "healnet"]
    h = t.set_index("model").loc["healnet"]
    assert h["modalities"] == "wsi+omics"
    assert h["demo_mean"] == pytest.approx(0.75) and h["demo_std"] == pytest.approx(0.05)  # ddof 0
    assert h["blca_mean"] == pytest.approx(0.625) and h["blca_folds"] == 2
    assert math.isnan(h["demo_published"]) and h["blca_published"] == pytest.approx(0.668)
    assert t.set_index("model").loc["abmil", "blca_published"] == pytest.approx(0.556)
    md = markdown(t, ["demo", "blca"], ["model", "modalities"], "T1")
    assert "| healnet | wsi+omics | 0.750 ± 0.050 | – | 0.625 ± 0.005 | 0.668 |" in md


def test_table1_leaves_a_model_not_trained_in_a_cohort_empty(caplog):
    t = table1(
        {"blca": ("b.tsv", COHORTS["blca"])},
        ["mcat", "snn"],
        {"mcat": ["wsi", "omics"], "snn": ["omics"]},
        {"mcat": "mcat", "snn": "snn"},
        KEYS,
    )
    row = t.set_index("model").loc["mcat"]
    assert math.isnan(row["blca_mean"]) and row["blca_folds"] == 0 and row["blca_published"] == pytest.approx(0.620)
    assert "b.tsv: no rows for model mcat" in caplog.text


def test_table2_xor_one_modality_and_all():
    cindex = {c: (f"{c}.tsv", df) for c, df in COHORTS.items()}
    missing = {
        "demo": (
            "m.tsv",
            missing_table(
                {
                    ("healnet", "one_random"): [0.6, 0.7],
                    ("healnet", "wsi_only"): [0.5, 0.5],
                    ("porpoise", "one_random"): [0.5, 0.6],
                }
            ),
        ),
        "blca": ("m.tsv", missing_table({("healnet", "one_random"): [0.61, 0.61]})),  # porpoise: no rows
    }
    xor = {
        "demo": ("x.tsv", missing_table({("xor", "one_random"): [0.58, 0.62]})),
        "blca": ("x.tsv", missing_table({("xor", "one_random"): [0.55, 0.57]})),
    }
    t = table2(
        cindex,
        missing,
        xor,
        ["snn", "abmil", "porpoise", "healnet"],
        MODS,
        "healnet",
        {"wsi": "abmil", "omics": "snn"},
        PUB,
        KEYS,
    ).set_index("row")
    assert list(t.index) == ["xor", "healnet:one_random", "healnet:all", "porpoise:one_random", "porpoise:all"]
    assert t.loc["xor", "model"] == "xor (wsi: abmil, omics: snn)"
    assert t.loc["xor", "demo_mean"] == pytest.approx(0.60) and t.loc["xor", "demo_std"] == pytest.approx(0.02)
    assert t.loc["xor", "blca_published"] == pytest.approx(0.547)
    assert t.loc["healnet:one_random", "demo_mean"] == pytest.approx(0.65)
    assert t.loc["healnet:one_random", "blca_published"] == pytest.approx(0.612)
    assert t.loc["healnet:all", "demo_mean"] == pytest.approx(0.75)
    assert t.loc["healnet:all", "blca_published"] == pytest.approx(0.668)  # Table 1's value
    assert math.isnan(t.loc["porpoise:one_random", "blca_mean"]) and t.loc["porpoise:one_random", "blca_folds"] == 0
    assert math.isnan(t.loc["porpoise:one_random", "blca_published"])


def test_uplift_over_best_unimodal_per_fold():
    t = uplift_table(COHORTS, ["snn", "abmil", "healnet", "porpoise"], MODS, PUB, KEYS)
    demo = t[t["cohort"] == "demo"].set_index("model")
    # demo: best unimodal snn (0.65 > 0.60); healnet per fold 100*(0.7/0.6-1), 100*(0.8/0.7-1)
    up = [100 * (0.7 / 0.6 - 1), 100 * (0.8 / 0.7 - 1)]
    assert demo.loc["healnet", "best_unimodal"] == "snn"
    assert demo.loc["healnet", "uplift_mean"] == pytest.approx(np.mean(up))
    assert demo.loc["healnet", "uplift_std"] == pytest.approx(np.std(up))
    assert math.isnan(demo.loc["healnet", "published_uplift"])
    blca = t[t["cohort"] == "blca"].set_index("model")
    assert blca.loc["porpoise", "best_unimodal"] == "abmil"  # 0.61 > 0.55
    assert blca.loc["porpoise", "uplift_mean"] == pytest.approx(np.mean([0.0, 100 * (0.6 / 0.62 - 1)]))
    assert blca.loc["healnet", "published_uplift"] == pytest.approx(100 * (0.668 / 0.606 - 1))
    mean = t[t["cohort"] == MEAN_GROUP].set_index("model")
    assert mean.loc["healnet", "uplift_mean"] == pytest.approx(
        (demo.loc["healnet", "uplift_mean"] + blca.loc["healnet", "uplift_mean"]) / 2
    )
    assert mean.loc["healnet", "published_uplift"] == pytest.approx(blca.loc["healnet", "published_uplift"])


def test_uplift_without_multimodal_models_is_empty_and_still_plotted(tmp_path):
    t = uplift_table(COHORTS, ["snn", "abmil"], MODS, PUB, KEYS)
    assert t.empty
    plot_uplift(t, tmp_path / "u.png")
    assert (tmp_path / "u.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_tables_and_figures(tmp_path):
    paths = {}
    for c, df in COHORTS.items():
        paths[c] = {n: tmp_path / c / f"{n}.tsv" for n in ("cindex", "missing", "xor")}
        write_tsv(df, paths[c]["cindex"])
        write_tsv(
            missing_table({("healnet", "one_random"): [0.6, 0.7], ("porpoise", "one_random"): [0.5, 0.6]}),
            paths[c]["missing"],
        )
        write_tsv(missing_table({("xor", "one_random"): [0.58, 0.62]}), paths[c]["xor"])
    paper = Paper(cohorts=["demo", "blca"], models=["snn", "abmil", "healnet", "porpoise"]).model_dump_json()
    mods = '{"snn": ["omics"], "abmil": ["wsi"], "healnet": ["wsi", "omics"], "porpoise": ["wsi", "omics"]}'
    files = lambda n: [str(paths[c][n]) for c in ("demo", "blca")]  # noqa: E731
    out = tmp_path / "paper"
    assert (
        main(
            [
                "paper",
                "tables",
                "--cohorts",
                "demo",
                "blca",
                "--cohort-keys",
                "demo",
                "blca",
                "--cindex",
                *files("cindex"),
                "--missing",
                *files("missing"),
                "--xor",
                *files("xor"),
                "--paper",
                paper,
                "--modalities",
                mods,
                "--table1",
                str(out / "table1.tsv"),
                "--table1-md",
                str(out / "table1.md"),
                "--table2",
                str(out / "table2.tsv"),
                "--log",
                str(tmp_path / "t.log"),
            ]
        )
        == 0
    )
    t1 = pd.read_csv(out / "table1.tsv", sep="\t").set_index("model")
    assert t1.loc["healnet", "blca_mean"] == pytest.approx(0.625) and t1.loc["snn", "blca_published"] == 0.606
    assert "Table 2" in (out / "table1.md").read_text() and "Hemker" in (out / "table1.md").read_text()
    assert "table 1 healnet" in (tmp_path / "t.log").read_text()
    t2 = pd.read_csv(out / "table2.tsv", sep="\t").set_index("row")
    assert t2.loc["xor", "demo_mean"] == pytest.approx(0.6)
    assert (
        main(
            [
                "paper",
                "figures",
                "--cohorts",
                "demo",
                "blca",
                "--cindex",
                *files("cindex"),
                "--paper",
                paper,
                "--modalities",
                mods,
                "--png",
                str(out / "uplift.png"),
                "--tsv",
                str(out / "uplift.tsv"),
            ]
        )
        == 0
    )
    up = pd.read_csv(out / "uplift.tsv", sep="\t")
    assert set(up["cohort"]) == {"demo", "blca", MEAN_GROUP} and (out / "uplift.png").stat().st_size > 5000
    # a wrong number of files is a user error naming the fix
    assert (
        main(
            [
                "paper",
                "figures",
                "--cohorts",
                "demo",
                "blca",
                "--cindex",
                files("cindex")[0],
                "--paper",
                paper,
                "--modalities",
                mods,
                "--png",
                str(out / "x.png"),
                "--tsv",
                str(out / "x.tsv"),
            ]
        )
        == 1
    )


def test_paper_config_is_checked():
    base = {
        "cohorts": {"demo": {"synthetic": True}},
        "models": {
            "healnet": {"architecture": "healnet", "modalities": ["wsi", "omics"]},
            "snn": {"architecture": "snn", "modalities": ["omics"]},
        },
    }
    with pytest.raises(ValueError, match="paper.cohorts: unknown cohort 'blca'"):
        parse_config(
            {**base, "paper": {"cohorts": ["blca"], "models": ["snn"], "missing_model": None, "inspect_model": None}}
        )
    demo = {"cohorts": ["demo"], "models": ["snn"]}
    with pytest.raises(ValueError, match="paper: unknown model 'abmil'"):
        parse_config({**base, "paper": demo})
    assert parse_config({**base, "paper": {"models": ["snn"]}}).paper.cohorts == []  # no paper target: not checked
    with pytest.raises(ValueError, match=r"paper.unimodal.wsi: model 'snn' uses \['omics'\], not only \[wsi\]"):
        parse_config({**base, "paper": {**demo, "unimodal": {"wsi": "snn", "omics": "snn"}}})
    with pytest.raises(ValueError, match=r"no unimodal model for modalities \['wsi'\]"):
        parse_config({**base, "paper": {**demo, "unimodal": {"omics": "snn"}}})
    with pytest.raises(ValueError, match="the name 'paper' is reserved"):
        parse_config({**base, "cohorts": {"paper": {"synthetic": True}}})
    cfg = parse_config({**base, "paper": {**demo, "missing_model": None, "inspect_model": None}})
    assert cfg.paper.needed_models() == ["snn"]
    assert Paper().needed_models() == ["snn", "abmil", "porpoise", "mcat", "perceiver", "healnet"]


# --- XOR baseline and inspection on tiny trained models -------------------------------------------

D, F = 6, 8
SMALL = {
    "depth": 1,
    "num_latents": 4,
    "latent_dim": 16,
    "heads": 2,
    "self_heads": 2,
    "dim_head": 8,
    "attn_dropout": 0.0,
    "ff_dropout": 0.0,
}


def tiny_fold(n: int = 48, n_test: int = 16, seed: int = 0) -> FoldData:
    """Risk in omics feature 0 and in patch feature 0; some patients lack a modality; patches on a
    224-px grid inside CMU-1-Small-Region (2220 x 2967)."""
    rng = np.random.default_rng(seed)
    risk = rng.normal(size=n)
    time = rng.exponential(30 * np.exp(-risk))
    event = (rng.random(n) > 0.3).astype(int)
    edges = np.quantile(time, [0, 0.25, 0.5, 0.75, 1])
    edges[0], edges[-1] = time.min() - 1e-6, time.max() + 1e-6
    omics = rng.normal(size=(n, F)).astype(np.float32)
    omics[:, 0] = risk
    has_omics = np.arange(n) % 7 != 3
    has_wsi = np.arange(n) % 5 != 2
    bags = {}
    for i in np.flatnonzero(has_wsi):
        k = int(rng.integers(4, 12))
        feats = rng.normal(size=(k, D)).astype(np.float32)
        feats[:, 0] += risk[i]
        cells = rng.choice(9 * 13, k, replace=False)
        coords = np.stack([cells % 9 * 224, cells // 9 * 224], 1).astype(np.int64)
        bags[f"P{i}"] = [SlideBag(f"S{i}", feats, coords, 224)]
    omics[~has_omics] = 0
    return FoldData(
        case_ids=[f"P{i}" for i in range(n)],
        time=time,
        event=event,
        bins=np.searchsorted(edges[1:-1], time, side="right"),
        edges=edges,
        tabular={"omics": omics},
        tabular_present={"omics": has_omics},
        feature_names={"omics": [f"G{j}_rnaseq" for j in range(F)]},
        wsi=WsiBags.from_arrays(bags),
        split_of=np.array(["train"] * (n - n_test) + ["test"] * n_test),
    )


class InMemoryCohort(CohortRuns):
    """The runs of `models_dir` with in-memory folds (FoldData) instead of stage files."""

    def __init__(self, models_dir: Path, folds: dict[int, FoldData], sheet: Path | None = None):
        super().__init__(models_dir, {k: Path(f"fold{k}.tsv") for k in folds}, sheet=sheet)
        self.folds_data = folds

    def fold(self, k: int, run) -> FoldData:
        return self.folds_data[k]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """healnet, snn and abmil trained 2 epochs on one tiny fold (single-threaded, a few seconds)."""
    import torch

    from healnet.training.loop import train_fold

    torch.set_num_threads(1)
    data = tiny_fold()
    models_dir = tmp_path_factory.mktemp("models")
    cfg = Training(epochs=2, batch_size=8, grad_accumulation=1, lr=3e-3, max_patches=None, device="cpu")
    for name, arch, mods, params in (
        ("healnet", "healnet", ["wsi", "omics"], SMALL),
        ("snn", "snn", ["omics"], {"hidden": [16, 16]}),
        ("abmil", "abmil", ["wsi"], {"dim": 16, "attn_dim": 8, "out_dim": 8}),
    ):
        train_fold(data, arch, mods, params, cfg, 0, models_dir / name / "fold0", name)
    return data, models_dir


def test_given_modality_and_xor_frame():
    present = {"wsi": np.array([True, False, True]), "omics": np.array([False, True, False])}
    given = given_modality(present, np.array([0, 1]), ["wsi", "omics"], ["a", "b", "c"])
    assert given == {"a": "wsi", "b": "omics"}
    preds = {
        "wsi": pd.DataFrame({"case_id": ["a", "c"], "risk": [-1.0, -2.0]}),
        "omics": pd.DataFrame({"case_id": ["b"], "risk": [-3.0]}),
    }
    f = xor_frame(given, preds, {"wsi": "abmil", "omics": "snn"})
    assert f[["case_id", "risk", "given", "xor_model"]].values.tolist() == [
        ["a", -1.0, "wsi", "abmil"],
        ["b", -3.0, "omics", "snn"],
    ]
    with pytest.raises(ValueError, match="patient b: not in the test predictions of 'snn'"):
        xor_frame(given, {**preds, "omics": preds["omics"].iloc[:0]}, {"wsi": "abmil", "omics": "snn"})
    with pytest.raises(ValueError, match="2 modalities"):
        given_modality({"wsi": np.ones(1, bool), "omics": np.ones(1, bool)}, np.array([0]), ["wsi", "omics"], ["a"])


def test_xor_baseline_uses_the_unimodal_predictions_of_the_one_random_assignment(trained):
    from healnet.survival.metrics import cindex

    data, models_dir = trained
    rows, patients = xor_baseline(
        InMemoryCohort(models_dir, {0: data}), "healnet", {"wsi": "abmil", "omics": "snn"}, Evaluation(missing_seed=3)
    )
    test = np.flatnonzero(data.split_of == "test")
    has = {m: data.present(m) for m in ("wsi", "omics")}
    assert len(patients) == len(test) == rows.loc[0, "n"]  # every test patient has a modality here
    both = [data.case_ids[i] for i in test if has["wsi"][i] and has["omics"][i]]
    for _, p in patients.iterrows():
        i = data.index[p["case_id"]]
        assert has[p["given"]][i]  # only a modality the patient has
        if p["case_id"] not in both:
            assert p["given"] == ("wsi" if has["wsi"][i] else "omics")
        pred = pd.read_csv(models_dir / p["xor_model"] / "fold0" / "predictions.tsv", sep="\t").set_index("case_id")
        assert p["xor_risk"] == pytest.approx(pred.loc[p["case_id"], "risk"])
    drawn = patients[patients["case_id"].isin(both)]["given"].value_counts()
    assert set(drawn.index) == {"wsi", "omics"}  # 50/50 draw among patients with both
    assert rows.loc[0, "cindex"] == pytest.approx(cindex(patients["time"], patients["event"], patients["xor_risk"]))
    again = xor_baseline(
        InMemoryCohort(models_dir, {0: data}), "healnet", {"wsi": "abmil", "omics": "snn"}, Evaluation(missing_seed=3)
    )[1]
    pd.testing.assert_frame_equal(patients, again)  # seeded
    assert patients["paired_model"].eq("healnet").all() and patients["paired_risk"].notna().all()


def test_pick_patient_prefers_all_modalities_and_top_patches_rank_by_attention():
    preds = pd.DataFrame(
        {
            "case_id": ["a", "b", "c"],
            "risk": [-1.0, -0.5, -2.0],
            "modalities": ["wsi+omics", "omics", "wsi+omics"],
            "fold": [0, 1, 1],
        }
    )
    picks = pick_patients(preds, ["wsi", "omics"], ("highest_risk", "lowest_risk"))
    assert picks["highest_risk"]["case_id"] == "a" and picks["lowest_risk"]["case_id"] == "c"
    assert pick_patients(preds[preds["case_id"] == "b"], ["wsi", "omics"])["highest_risk"]["case_id"] == "b"
    bags = [
        SlideBag("s1", np.zeros((3, 2), np.float32), np.array([[0, 0], [224, 0], [448, 0]]), 224),
        SlideBag("s2", np.zeros((2, 2), np.float32), np.array([[0, 448], [224, 448]]), 448),
    ]
    t = top_patches(bags, np.array([0.1, 0.5, 0.2, 0.9, 0.3]), 3)
    assert t[["rank", "slide_id", "x", "y", "size_level0"]].values.tolist() == [
        [1, "s2", 0, 448, 448],
        [2, "s1", 224, 0, 224],
        [3, "s2", 224, 448, 448],
    ]
    with pytest.raises(ValueError, match="4 patch attention scores for 5 patches"):
        top_patches(bags, np.zeros(4), 2)


def test_inspection_heatmap_top_features_and_tiles(trained, shared_data, tmp_path):
    import cv2

    data, models_dir = trained
    slide = shared_data / "slides" / "CMU-1-Small-Region.svs"
    sheet = tmp_path / "slides.tsv"
    ids = [c for c in data.case_ids if data.wsi.has(c)]
    pd.DataFrame({"case_id": ids, "slide_id": [f"S{c[1:]}" for c in ids], "path": str(slide)}).to_csv(
        sheet, sep="\t", index=False
    )
    out = tmp_path / "inspection"
    index = inspect_cohort(
        "healnet",
        InMemoryCohort(models_dir, {0: data}, sheet),
        Evaluation(inspect_top_features=5),
        Paper(top_patches=3),
        Patching(patch_size=64),
        out,
    )
    pred = pd.read_csv(models_dir / "healnet" / "fold0" / "predictions.tsv", sep="\t")
    full = pred[pred["modalities"] == "wsi+omics"]
    case = full.loc[full["risk"].idxmax(), "case_id"]
    assert set(index["case_id"]) == {case}
    assert set(index["kind"]) == {"heatmap", "tile", "top_patches", "top_features"}
    assert pd.read_csv(out / "index.tsv", sep="\t")["file"].tolist() == index["file"].tolist()
    for f in index["file"]:
        assert (out / f).stat().st_size > 0
    tiles = pd.read_csv(out / "tiles.tsv", sep="\t")
    assert tiles["rank"].tolist() == [1, 2, 3] and tiles["attention"].is_monotonic_decreasing
    bag = data.wsi.slide_bags(case)[0]
    assert {(x, y) for x, y in zip(tiles["x"], tiles["y"])} <= {tuple(c) for c in bag.coords}
    import openslide

    x, y = int(tiles["x"][0]), int(tiles["y"][0])
    with openslide.OpenSlide(str(slide)) as osr:  # the level-0 patch, area-resampled to patch_size
        want = cv2.resize(
            np.asarray(osr.read_region((x, y), 0, (224, 224)).convert("RGB")), (64, 64), interpolation=cv2.INTER_AREA
        )
    img = cv2.cvtColor(cv2.imread(str(out / tiles["file"][0])), cv2.COLOR_BGR2RGB)
    assert img.shape == (64, 64, 3) and np.abs(img.astype(int) - want).max() <= 1
    top = pd.read_csv(out / f"{case}_omics_top_features.tsv", sep="\t")
    assert len(top) == 5 and set(top["feature"]) <= {f"G{j}_rnaseq" for j in range(F)}
    assert top["attention"].is_monotonic_decreasing
    # no inspected model: an empty index, the folder still complete
    assert inspect_cohort(
        None, InMemoryCohort(models_dir, {0: data}, sheet), Evaluation(), Paper(), Patching(), tmp_path / "none"
    ).empty
    assert (tmp_path / "none" / "index.tsv").exists()


# --- end to end: `snakemake paper` on a tiny demo cohort ----------------------------------------

TINY = {
    "demo": {"n_patients": 8, "slide_size_um": [800.0, 600.0]},
    "encoders": {"tiny": {"model": "resnet18", "truncate_after": "layer1", "pretrained": False, "image_size": 32}},
    "cohorts": {"demo": {"encoder": "tiny", "training": {"epochs": 1}}},  # over the demo's own 40
    "features": {"batch_size": 32, "num_workers": 0},
    "splits": {"n_folds": 2},
    "labels": {"edges_from": "cohort"},  # 4 training patients per fold cannot make 4 bins of their own
    "training": {"epochs": 1, "batch_size": 4, "grad_accumulation": 1, "max_patches": 16, "device": "cpu"},
    "evaluation": {"inspect_thumbnail_px": 128, "inspect_top_features": 5},
    "paper": {"top_patches": 2},
    "models": {
        "healnet": {"architecture": "healnet", "modalities": ["wsi", "omics"], "params": SMALL},
        "snn": {"architecture": "snn", "modalities": ["omics"], "params": {"hidden": [16, 16]}},
        "abmil": {"architecture": "abmil", "modalities": ["wsi"], "params": {"dim": 16, "attn_dim": 8, "out_dim": 8}},
        "porpoise": {
            "architecture": "porpoise",
            "modalities": ["wsi", "omics"],
            "params": {"embed_dim": 16, "path_dim": 16, "attn_dim": 8, "omic_hidden": [16, 16]},
        },
        "mcat": {
            "architecture": "mcat",
            "modalities": ["wsi", "omics"],
            "params": {"dim": 16, "omic_hidden": [16, 16], "depth": 1, "heads": 2, "ff_dim": 16},
        },
        "perceiver": {
            "architecture": "perceiver",
            "modalities": ["wsi", "omics"],
            "params": {"depth": 1, "num_latents": 4, "latent_dim": 16, "token_dim": 8, "dim_head": 8},
        },
    },
}


@pytest.mark.slow
def test_snakemake_paper_on_a_tiny_demo(repo, tmp_path):
    """Every artefact from scratch; the tables agree with the per-fold predictions; nothing left to do after."""
    from healnet.survival.metrics import cindex

    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(TINY, sort_keys=False))
    bindir = Path(sys.executable).parent
    cmd = [
        str(bindir / "snakemake"),
        "--snakefile",
        str(repo / "workflow" / "Snakefile"),
        "--configfile",
        str(repo / "config.yaml"),
        "tiny.yaml",
        "--cores",
        "2",
    ]
    env = {**os.environ, "PATH": f"{bindir}:{os.environ['PATH']}", "OMP_NUM_THREADS": "1"}
    # two 1-thread jobs at once on 2 cores (the profile allows one `gpu` job at a time; no GPU is used here)
    one_thread = ["--resources", "gpu=2", "--set-threads", "train=1", "features=1", "--"]
    run = subprocess.run(
        cmd + one_thread + ["paper"], cwd=tmp_path, capture_output=True, text=True, timeout=600, env=env
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-5000:]

    out = tmp_path / "results" / "paper"
    models = ["snn", "abmil", "porpoise", "mcat", "perceiver", "healnet", "coxnet", "cox_clinical"]  # + references
    t1 = pd.read_csv(out / "table1.tsv", sep="\t").set_index("model")
    assert list(t1.index) == models and (t1["demo_folds"] <= 2).all() and t1["demo_published"].isna().all()
    # Table 1 is the mean over folds of the c-index of each fold's predictions.tsv (the train rule's)
    for model in models:
        per_fold = []
        for k in range(2):
            p = pd.read_csv(tmp_path / f"results/demo/models/{model}/fold{k}/predictions.tsv", sep="\t")
            per_fold.append(cindex(p["time"], p["event"], p["risk"]))
        want = np.nanmean(per_fold) if np.isfinite(per_fold).any() else np.nan
        assert t1.loc[model, "demo_mean"] == pytest.approx(want, abs=1e-4, nan_ok=True)
    t2 = pd.read_csv(out / "table2.tsv", sep="\t").set_index("row")
    assert list(t2.index) == ["xor"] + [
        f"{m}:{s}" for m in ("healnet", "porpoise", "mcat", "perceiver") for s in ("one_random", "all")
    ]
    missing = pd.read_csv(out / "demo" / "cindex_missing.tsv", sep="\t", dtype={"fold": str})
    one = missing[(missing["model"] == "healnet") & (missing["scenario"] == "one_random") & (missing["fold"] == "mean")]
    assert t2.loc["healnet:one_random", "demo_mean"] == pytest.approx(one["cindex"].item(), abs=1e-4, nan_ok=True)
    # XOR: each patient's risk is its unimodal model's prediction; the paired HEALNet run is recorded
    xp = pd.read_csv(out / "demo" / "xor_patients.tsv", sep="\t")
    assert set(xp["given"]) <= {"wsi", "omics"} and len(xp) == one_n(missing)
    for _, r in xp.iterrows():
        pred = pd.read_csv(tmp_path / f"results/demo/models/{r['xor_model']}/fold{r['fold']}/predictions.tsv", sep="\t")
        assert r["xor_risk"] == pytest.approx(pred.set_index("case_id").loc[r["case_id"], "risk"], abs=1e-6)
    up = pd.read_csv(out / "uplift.tsv", sep="\t")
    assert set(up["model"]) == {"porpoise", "mcat", "perceiver", "healnet"}
    assert set(up["cohort"]) == {"demo", MEAN_GROUP} and set(up["best_unimodal"].fillna("")) <= {"snn", "abmil", ""}
    assert (out / "uplift.png").stat().st_size > 5000 and "Table 2" in (out / "table1.md").read_text()
    index = pd.read_csv(out / "inspection" / "demo" / "index.tsv", sep="\t")
    assert {"heatmap", "top_features", "tile"} <= set(index["kind"]) and index["model"].eq("healnet").all()
    assert all((out / "inspection" / "demo" / f).exists() for f in index["file"])
    assert len(pd.read_csv(out / "inspection" / "demo" / "tiles.tsv", sep="\t")) == 2
    again = subprocess.run(
        cmd + ["--dry-run", "paper"], cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env
    )
    assert "Nothing to be done" in again.stdout + again.stderr


def one_n(missing: pd.DataFrame) -> int:
    """Test patients over the folds in HEALNet's one_random scenario."""
    rows = missing[
        (missing["model"] == "healnet") & (missing["scenario"] == "one_random") & missing["fold"].str.isdigit()
    ]
    return int(rows["n"].sum())
