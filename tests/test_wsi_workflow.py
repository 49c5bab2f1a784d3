"""The WSI rules for real: Snakemake runs tissue -> patches -> features -> slides_qc on a tiny cohort
with a good slide, a slide whose mpp comes only from the sample sheet, one whose mpp comes only from
the cohort's `mpp`, and an unreadable one."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

from healnet.wsi.store import read_feature_store
from healnet.wsi.synthetic import he_image, write_slide


def test_snakemake_wsi_rules(shared_data, tmp_path, snakemake_in):
    tissue = np.zeros((896, 1344), bool)
    tissue[224:672, 224:1120] = True
    image = he_image(1344, 896, 0.5, tissue)
    write_slide(tmp_path / "good.svs", image, 0.5, downsamples=(1, 4))
    write_slide(tmp_path / "nompp.tiff", image[:, ::-1], None, "generic", downsamples=(1, 4))
    write_slide(tmp_path / "nompp2.tiff", image[::-1], None, "generic", downsamples=(1, 4))
    pd.DataFrame(
        {
            "case_id": ["P1", "P2", "P3", "P4"],
            "slide_id": ["good", "sheet_mpp", "cohort_mpp", "broken"],
            "path": ["good.svs", "nompp.tiff", "nompp2.tiff", str(shared_data / "slides/synthetic/unopenable.tiff")],
            "mpp": [None, 0.5, None, None],
        }
    ).to_csv(tmp_path / "slides.tsv", sep="\t", index=False)
    (tmp_path / "extra.yaml").write_text(
        "cohorts:\n"
        "  wsitest: {slides: slides.tsv, encoder: tiny, mpp: 0.5}\n"
        "encoders:\n"
        "  tiny: {model: resnet18, truncate_after: layer2, pretrained: false}\n"
        "features: {batch_size: 16, num_workers: 1}\n"
    )
    result = snakemake_in(tmp_path, "results/wsitest/qc/slides.tsv", timeout=400)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    table = pd.read_csv(tmp_path / "results/wsitest/qc/slides.tsv", sep="\t", keep_default_na=False).set_index(
        "slide_id"
    )
    assert table["status"].to_dict() == {"good": "ok", "sheet_mpp": "ok", "cohort_mpp": "ok", "broken": "failed"}
    assert table["n_patches"].to_dict() == {"good": 8, "sheet_mpp": 8, "cohort_mpp": 8, "broken": 0}
    assert float(table.loc["sheet_mpp", "mpp"]) == 0.5 and table.loc["broken", "mpp"] == ""
    assert "cannot be opened" in table.loc["broken", "reason"]
    good = read_feature_store(tmp_path / "results/wsitest/features/tiny/good.zarr")
    assert good.features.shape == (8, 128) and good.attrs["encoder"] == "tiny" and good.attrs["random_weights"]
    assert good.attrs["mpp_source"] == "openslide.mpp-x/y"
    mirrored = read_feature_store(tmp_path / "results/wsitest/features/tiny/sheet_mpp.zarr")
    assert mirrored.attrs["mpp_source"] == "sample sheet" and mirrored.features.shape == (8, 128)
    flipped = read_feature_store(tmp_path / "results/wsitest/features/tiny/cohort_mpp.zarr")
    assert flipped.attrs["mpp_source"] == "cohort override" and flipped.attrs["mpp"] == 0.5
    geo = json.loads((tmp_path / "results/wsitest/tissue/good.geojson").read_text())
    assert geo["healnet"]["status"] == "ok" and len(geo["features"]) == 1
    assert (tmp_path / "results/wsitest/qc/good.png").exists() and (tmp_path / "results/wsitest/qc/broken.png").exists()
    assert (tmp_path / "benchmarks/wsitest/features/tiny/good.tsv").exists()
    assert "RANDOM weights" in (tmp_path / "logs/wsitest/features/tiny/good.log").read_text()
    # complete and up to date: a second run has nothing to do
    again = snakemake_in(tmp_path, "results/wsitest/qc/slides.tsv", "--dry-run", timeout=300)
    assert "Nothing to be done" in again.stdout + again.stderr
