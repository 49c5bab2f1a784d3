"""The synthetic demo cohort: patients, planted survival signal, omics table, slides.

Planted signal (the ground truth in `truth.tsv`):

- each patient has two independent standard-normal risk parts, `risk_wsi` and `risk_omics`, and
  `risk = risk_wsi + risk_omics` (equal weight);
- `risk_wsi` is visible only in the slides: nuclear density and size in tissue
  (see `healnet.demo.slides`); a patient's slides share it, their layouts differ;
- `risk_omics` is visible only in `N_PLANTED_RNASEQ` rnaseq features and one cnv feature
  (`DemoCohort.planted`, also written to `planted_features.tsv`): each rnaseq one is
  `+-LOADING * risk_omics + sqrt(1 - LOADING^2) * noise`, the cnv one a {-2..2} call of
  `0.8 * risk_omics + 0.6 * noise`. All other omic features are noise: rnaseq continuous (normal or
  skewed, a few heavy positive outliers as in TCGA), cnv in {-2..2}, mut binary. Clinical columns
  (age, sex, site) carry no signal;
- survival: Weibull proportional hazards, T = 1 + SCALE_MONTHS * (E / exp(s * risk))^(1/SHAPE),
  E ~ Exp(1), s = `demo.signal_strength`; independent censoring (loss to follow-up at a constant
  rate) C ~ 1 + Exp(mean c_mean), capped at END_OF_STUDY months, c_mean solved so that the censored
  fraction is `demo.censoring`. The noise of log E (Gumbel, sd 1.28) competes with s * risk (sd
  1.41 s): at s = 1 the true risk reaches c-index ~0.79 and each half ~0.70, too close for fusion to
  show on small test folds; at the default s = 2 the true risk orders survival with c-index ~0.89 and
  each half alone ~0.75 (large samples), so a fusion model has room to beat both unimodal ones.

Missing modalities: `frac_no_slide` of patients have no slide (one table row, empty `slide_id`),
`frac_no_omics` have empty omic cells; the two sets are disjoint. `frac_two_slides` of patients
have two slides. Slides are a mix (`svs_fraction`) of Aperio SVS at 0.25 um/px and generic TIFF at
0.5 um/px.

Determinism: patient-level data come from one generator seeded by `demo.seed`; each slide's pixels
from a generator seeded by (seed, patient, slide number). So the table is identical whether or not
slides are written, and a slide's pixels do not depend on which other slides exist.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from healnet.config import Demo
from healnet.demo.slides import SlideSpec

log = logging.getLogger(__name__)

N_PLANTED_RNASEQ = 4
LOADING = 0.85  # correlation of each planted rnaseq feature with risk_omics
SHAPE = 1.2  # Weibull shape
SCALE_MONTHS = 60.0  # Weibull scale at risk 0
END_OF_STUDY = 150.0  # months; administrative censoring
SVS_MPP, TIFF_MPP = 0.25, 0.5
SITES = ["A1", "B2", "C3", "D4", "E5", "F6"]
META_COLUMNS = [
    "case_id",
    "slide_id",
    "age",
    "site",
    "survival_months",
    "censorship",
    "is_female",
    "oncotree_code",
    "train",
]
COHORT_STREAM, SLIDE_STREAM = 0xC0, 0x51  # seed-sequence tags: independent generator streams


@dataclass
class DemoCohort:
    """Everything about a generated cohort, before or after its files are written."""

    patients: pd.DataFrame  # one row per patient: ids, risks, survival, missingness
    table: pd.DataFrame  # TCGA format, one row per slide (or per slide-less patient)
    sheet: pd.DataFrame  # sample sheet: case_id, slide_id, path
    truth: pd.DataFrame  # case_id, risk_wsi, risk_omics, risk
    planted: pd.DataFrame  # feature, loading: the omic features that carry risk_omics
    slides: list[SlideSpec]


def case_ids(n: int) -> list[str]:
    return [f"DEMO-{i:04d}" for i in range(1, n + 1)]


def feature_names(cfg: Demo) -> dict[str, list[str]]:
    """Gene-like names, unique across types: rnaseq G001.., then cnv, then mut."""
    names, start = {}, 1
    for omic, n in (("rnaseq", cfg.n_rnaseq), ("cnv", cfg.n_cnv), ("mut", cfg.n_mut)):
        names[omic] = [f"G{i:03d}_{omic}" for i in range(start, start + n)]
        start += n
    return names


def survival(
    rng: np.random.Generator, risk: np.ndarray, censoring: float, strength: float = 1.0
) -> tuple[np.ndarray, np.ndarray]:
    """Observed months and censorship (1 = censored) from a Weibull PH model with log hazard
    ratio `strength * risk`."""
    n = len(risk)
    event_time = 1.0 + SCALE_MONTHS * (rng.exponential(size=n) / np.exp(strength * risk)) ** (1.0 / SHAPE)
    u = rng.exponential(size=n)

    def censor_times(c_mean: float) -> np.ndarray:
        return np.minimum(1.0 + u * c_mean, END_OF_STUDY)

    # The censored fraction falls as c_mean grows: bisect (geometrically) for the target on this sample.
    lo, hi = 1e-3, 1e5
    for _ in range(100):
        mid = np.sqrt(lo * hi)
        if np.mean(censor_times(mid) < event_time) > censoring:
            lo = mid
        else:
            hi = mid
    c = censor_times(hi)
    censored = (c < event_time).astype(int)
    months = np.round(np.minimum(event_time, c), 2)
    return months, censored


def simulate_omics(rng: np.random.Generator, risk_omics: np.ndarray, cfg: Demo) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Omic feature matrix (one row per patient) and the planted features with their loadings."""
    n = len(risk_omics)
    names = feature_names(cfg)
    # rnaseq noise: half normal, half skewed (standardised log-normal), like MAD-selected genes.
    rna = rng.standard_normal((n, cfg.n_rnaseq))
    skewed = rng.uniform(size=cfg.n_rnaseq) < 0.5
    sigma = rng.uniform(0.4, 1.0, cfg.n_rnaseq)
    logn = np.exp(sigma * rng.standard_normal((n, cfg.n_rnaseq)))
    logn = (logn - logn.mean(0)) / logn.std(0)
    rna[:, skewed] = logn[:, skewed]
    planted_rna = rng.choice(cfg.n_rnaseq, N_PLANTED_RNASEQ, replace=False)
    signs = rng.choice([-1.0, 1.0], N_PLANTED_RNASEQ)
    for j, sign in zip(planted_rna, signs):
        rna[:, j] = sign * LOADING * risk_omics + np.sqrt(1 - LOADING**2) * rng.standard_normal(n)
    # A few heavy positive outliers (TCGA rnaseq reaches 10^4), only in noise features so the
    # planted signal survives a plain z-score.
    noise_cols = np.setdiff1d(np.arange(cfg.n_rnaseq), planted_rna)
    outlier = (rng.uniform(size=(n, cfg.n_rnaseq)) < 0.004) & np.isin(np.arange(cfg.n_rnaseq), noise_cols)
    rna[outlier] = 10 ** rng.uniform(1.0, 3.5, outlier.sum())
    # cnv: GISTIC-like calls, mostly 0; one planted feature follows risk_omics.
    p_del, p_amp = rng.uniform(0.05, 0.25, cfg.n_cnv), rng.uniform(0.05, 0.25, cfg.n_cnv)
    u = rng.uniform(size=(n, cfg.n_cnv))
    deep = rng.uniform(size=(n, cfg.n_cnv)) < 0.2
    cnv = np.where(u < p_del, -1, np.where(u > 1 - p_amp, 1, 0)) * np.where(deep, 2, 1)
    planted_cnv = int(rng.integers(cfg.n_cnv))
    latent = 0.8 * risk_omics + 0.6 * rng.standard_normal(n)
    cnv[:, planted_cnv] = np.digitize(latent, [-1.5, -0.5, 0.5, 1.5]) - 2
    # mut: binary, gene-specific frequency, no signal.
    mut = (rng.uniform(size=(n, cfg.n_mut)) < rng.uniform(0.03, 0.3, cfg.n_mut)).astype(int)

    omics = pd.concat(
        [
            pd.DataFrame(np.round(rna, 4), columns=names["rnaseq"]),
            pd.DataFrame(cnv, columns=names["cnv"]).astype("Int64"),
            pd.DataFrame(mut, columns=names["mut"]).astype("Int64"),
        ],
        axis=1,
    )
    planted = pd.DataFrame(
        {
            "feature": [names["rnaseq"][j] for j in planted_rna] + [names["cnv"][planted_cnv]],
            "loading": [float(s * LOADING) for s in signs] + [0.8],
        }
    )
    return omics, planted


def _missingness(rng: np.random.Generator, cfg: Demo) -> tuple[np.ndarray, np.ndarray]:
    """Slides per patient (0, 1 or 2) and has-omics flags; no patient lacks both."""
    n = cfg.n_patients
    n_no_slide = int(round(cfg.frac_no_slide * n))
    n_no_omics = int(round(cfg.frac_no_omics * n))
    order = rng.permutation(n)
    n_slides = np.ones(n, int)
    has_omics = np.ones(n, bool)
    n_slides[order[:n_no_slide]] = 0
    has_omics[order[n_no_slide : n_no_slide + n_no_omics]] = False
    with_slides = np.flatnonzero(n_slides > 0)
    n_two = min(int(round(cfg.frac_two_slides * n)), len(with_slides))
    n_slides[rng.choice(with_slides, n_two, replace=False)] = 2
    return n_slides, has_omics


def simulate_cohort(cfg: Demo, outdir: str | Path = "data/demo") -> DemoCohort:
    """All patient-level data and the slide plan, without painting or writing anything."""
    rng = np.random.default_rng([cfg.seed, COHORT_STREAM])
    n = cfg.n_patients
    ids = case_ids(n)
    risk_wsi = rng.standard_normal(n)
    risk_omics = rng.standard_normal(n)
    risk = risk_wsi + risk_omics
    months, censorship = survival(rng, risk, cfg.censoring, cfg.signal_strength)
    n_slides, has_omics = _missingness(rng, cfg)
    omics, planted = simulate_omics(rng, risk_omics, cfg)
    omics.loc[~has_omics, :] = pd.NA
    clinical = pd.DataFrame(
        {
            "case_id": ids,
            "age": np.clip(np.round(rng.normal(64, 11, n)), 30, 90).astype(int),
            "site": rng.choice(SITES, n),
            "survival_months": months,
            "censorship": censorship,
            "is_female": (rng.uniform(size=n) < 0.5).astype(int),
            "oncotree_code": "DEMO",
            "train": 1.0,
        }
    )
    # Slide plan: ids, formats (exactly round(svs_fraction * slides) Aperio files), per-slide seeds.
    slide_rows = [(p, k) for p in range(n) for k in range(1, n_slides[p] + 1)]
    n_svs = int(round(cfg.svs_fraction * len(slide_rows)))
    is_svs = np.zeros(len(slide_rows), bool)
    is_svs[rng.permutation(len(slide_rows))[:n_svs]] = True
    slides_dir = Path(outdir) / "slides"
    slides = []
    for (p, k), svs in zip(slide_rows, is_svs):
        fmt = "svs" if svs else "tiff"
        slide_id = f"{ids[p]}-DX{k}"
        slides.append(
            SlideSpec(
                slide_id=slide_id,
                path=slides_dir / f"{slide_id}.{fmt}",
                fmt=fmt,
                mpp=SVS_MPP if svs else TIFF_MPP,
                risk_wsi=float(risk_wsi[p]),
                seed=(cfg.seed, SLIDE_STREAM, p + 1, k),
            )
        )

    patients = pd.DataFrame(
        {
            "case_id": ids,
            "risk_wsi": risk_wsi,
            "risk_omics": risk_omics,
            "risk": risk,
            "survival_months": months,
            "censorship": censorship,
            "n_slides": n_slides,
            "has_omics": has_omics,
        }
    )
    truth = patients[["case_id", "risk_wsi", "risk_omics", "risk"]].round(6)
    sheet = pd.DataFrame(
        {
            "case_id": [s.slide_id.rsplit("-", 1)[0] for s in slides],
            "slide_id": [s.slide_id for s in slides],
            "path": [str(s.path) for s in slides],
        }
    )
    table = _tcga_table(clinical, omics, sheet)
    return DemoCohort(patients=patients, table=table, sheet=sheet, truth=truth, planted=planted, slides=slides)


def _tcga_table(clinical: pd.DataFrame, omics: pd.DataFrame, sheet: pd.DataFrame) -> pd.DataFrame:
    """One row per slide, a slide-less patient once with an empty slide_id; TCGA column order."""
    patient = pd.concat([clinical, omics], axis=1)
    table = patient.merge(sheet[["case_id", "slide_id"]], on="case_id", how="left")
    table["slide_id"] = table["slide_id"].fillna("")
    return table[META_COLUMNS + list(omics.columns)].reset_index(drop=True)


def _dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def _paint_and_write(spec: SlideSpec, target: Path, width_um: float, height_um: float, quality: int) -> str:
    from healnet.demo.slides import paint_slide, write_slide

    rng = np.random.default_rng(list(spec.seed))
    image = paint_slide(rng, width_um, height_um, spec.risk_wsi, spec.mpp)
    write_slide(target, image, spec.fmt, spec.mpp, quality=quality)
    return spec.slide_id


def write_cohort(cfg: Demo, outdir: str | Path, workers: int = 1) -> DemoCohort:
    """Generate the cohort and write slides/, slides.tsv, clinical_omics.csv, truth.tsv,
    planted_features.tsv under `outdir`, each atomically (slides/ as one directory swap)."""
    from concurrent.futures import ProcessPoolExecutor

    from tqdm import tqdm

    from healnet.io import atomic_path, write_tsv

    outdir = Path(outdir)
    cohort = simulate_cohort(cfg, outdir)
    width_um, height_um = cfg.slide_size_um
    with atomic_path(outdir / "slides") as tmp_dir:
        tmp_dir.mkdir()
        jobs = [(s, tmp_dir / s.path.name, width_um, height_um, cfg.jpeg_quality) for s in cohort.slides]
        bar = tqdm(total=len(jobs), desc="demo slides", unit="slide", disable=None)
        if workers > 1 and len(jobs) > 1:
            with ProcessPoolExecutor(max_workers=workers) as pool:
                for _ in pool.map(_paint_and_write, *zip(*jobs)):
                    bar.update()
        else:
            for job in jobs:
                _paint_and_write(*job)
                bar.update()
        bar.close()
    with atomic_path(outdir / "clinical_omics.csv") as tmp:
        cohort.table.to_csv(tmp, index=True)  # unnamed integer index first, as in the TCGA files
    write_tsv(cohort.truth, outdir / "truth.tsv")
    write_tsv(cohort.planted, outdir / "planted_features.tsv")
    write_tsv(cohort.sheet, outdir / "slides.tsv")  # last: the sample sheet marks a finished cohort
    return cohort


def summarize(cohort: DemoCohort, outdir: str | Path | None = None) -> dict:
    """Sizes, missingness, censoring and the truth's c-index, for logs and reports."""
    from sksurv.metrics import concordance_index_censored

    p = cohort.patients
    event = p["censorship"].to_numpy() == 0
    t = p["survival_months"].to_numpy()

    def cindex(score: str) -> float:
        return float(concordance_index_censored(event, t, p[score].to_numpy())[0])

    summary = {
        "patients": len(p),
        "slides": len(cohort.slides),
        "svs_slides": sum(s.fmt == "svs" for s in cohort.slides),
        "two_slides": int((p["n_slides"] == 2).sum()),
        "no_slide": int((p["n_slides"] == 0).sum()),
        "no_omics": int((~p["has_omics"]).sum()),
        "censored_fraction": float(p["censorship"].mean()),
        "months_min": float(t.min()),
        "months_max": float(t.max()),
        "cindex_risk": cindex("risk"),
        "cindex_risk_wsi": cindex("risk_wsi"),
        "cindex_risk_omics": cindex("risk_omics"),
    }
    if outdir is not None:
        summary["disk_bytes"] = _dir_bytes(Path(outdir))
    return summary
