"""The five baselines (SNN, ABMIL, Porpoise, MCAT, Perceiver): shapes, padding, missing modalities,
MCAT's gene families, and that a few optimisation steps lower the NLL survival loss."""

from __future__ import annotations

import zipfile

import pandas as pd
import pytest
import torch

from healnet.models import REGISTRY, build_model
from healnet.models.mcat import group_by_type, omic_groups

D, F, BINS = 16, 10, 4
NAMES = {"rnaseq": [f"G{i}_rnaseq" for i in range(6)], "cnv": [f"G{i}_cnv" for i in range(4)]}
DIMS = {
    "snn": {"omics": F},
    "abmil": {"wsi": D},
    "porpoise": {"wsi": D, "omics": F},
    "mcat": {"wsi": D, "omics": F},
    "perceiver": {"wsi": D, "omics": F},
}
MULTIMODAL = ["porpoise", "mcat", "perceiver"]
WSI_MODELS = ["abmil", *MULTIMODAL]


pytestmark = pytest.mark.usefixtures("single_thread")


def model(name: str, seed: int = 0, **params) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model(name, DIMS[name], BINS, params, feature_names=NAMES).eval()


def make_batch(lengths: list[int], wsi=None, omics=None, n_max: int | None = None, seed: int = 1) -> dict:
    """Bags of the given lengths padded to n_max with NaN (padding must never matter)."""
    g = torch.Generator().manual_seed(seed)
    b, n_max = len(lengths), n_max or max(lengths)
    bags = torch.full((b, n_max, D), float("nan"))
    mask = torch.zeros(b, n_max, dtype=torch.bool)
    for i, n in enumerate(lengths):
        bags[i, :n] = torch.randn(n, D, generator=g)
        mask[i, :n] = True
    return {
        "wsi": bags,
        "wsi_mask": mask,
        "omics": torch.randn(b, F, generator=g),
        "present": {
            "wsi": torch.ones(b, dtype=torch.bool) if wsi is None else torch.tensor(wsi),
            "omics": torch.ones(b, dtype=torch.bool) if omics is None else torch.tensor(omics),
        },
    }


def row(batch: dict, i: int, n: int) -> dict:
    """Sample i alone, its bag cut to its n real patches (no padding)."""
    return {
        "wsi": batch["wsi"][i : i + 1, :n],
        "wsi_mask": batch["wsi_mask"][i : i + 1, :n],
        "omics": batch["omics"][i : i + 1],
        "present": {k: v[i : i + 1] for k, v in batch["present"].items()},
    }


def test_all_five_registered_with_missing_handling():
    build_model("snn", {"omics": 3}, 2)  # imports every model module
    for name in DIMS:
        assert name in REGISTRY
        assert len(REGISTRY[name].missing_modality_handling) > 40


@pytest.mark.parametrize("name", list(DIMS))
def test_forward_shapes_and_finite(name):
    out = model(name)(make_batch([5, 9, 2]))
    assert out.shape == (3, BINS)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", WSI_MODELS)
def test_padded_bag_equals_unpadded(name):
    m = model(name)
    batch = make_batch([5, 9, 2], n_max=12)  # NaN padding up to 12
    out = m(batch)
    for i, n in enumerate([5, 9, 2]):
        alone = m(row(batch, i, n))
        torch.testing.assert_close(out[i : i + 1], alone, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", MULTIMODAL)
def test_missing_modality_is_ignored_not_imputed(name):
    m = model(name)
    batch = make_batch([5, 4, 6], wsi=[True, False, True], omics=[True, True, False])
    out = m(batch)
    assert torch.isfinite(out).all()
    # whatever the absent modality holds (NaN, other values), the prediction is the same
    poisoned = {**batch, "wsi": batch["wsi"].clone(), "omics": batch["omics"].clone()}
    poisoned["wsi"][1] = float("nan")
    poisoned["omics"][2] = float("nan")
    torch.testing.assert_close(m(poisoned), out)
    # ... while a present modality does matter
    full = make_batch([5, 4, 6])
    assert not torch.allclose(m(full)[1], out[1], atol=1e-4)
    assert not torch.allclose(m(full)[2], out[2], atol=1e-4)


@pytest.mark.parametrize("name", MULTIMODAL)
def test_missing_modality_gradients_stay_finite(name):
    m = model(name).train()
    batch = make_batch([5, 4, 6], wsi=[True, False, True], omics=[True, True, False])
    batch["wsi"][1] = float("nan")
    batch["omics"][2] = float("nan")
    m(batch).sum().backward()
    grads = [p.grad for p in m.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize(
    ("name", "dropped", "prefixes"),
    [
        ("porpoise", "wsi", ("path.",)),
        ("porpoise", "omics", ("omic.",)),
        ("mcat", "wsi", ("wsi_net.", "coattn.", "path_stream.")),
        ("perceiver", "wsi", ("tokenizers.wsi.",)),
        ("perceiver", "omics", ("tokenizers.omics.",)),
    ],
)
def test_modality_absent_for_all_equals_model_built_without_it(name, dropped, prefixes):
    """A cohort without a modality (not in input_dims) behaves as if every sample lacked it."""
    full = model(name)
    dims = {k: v for k, v in DIMS[name].items() if k != dropped}
    without = build_model(name, dims, BINS, feature_names=NAMES).eval()
    keys = without.load_state_dict(full.state_dict(), strict=False)
    assert keys.missing_keys == [] and keys.unexpected_keys
    assert all(k.startswith(prefixes) for k in keys.unexpected_keys)  # only the dropped modality's weights
    batch = make_batch([5, 7], **{dropped: [False, False]})
    kept = [k for k in ("wsi", "wsi_mask", "omics") if k.split("_")[0] != dropped]
    torch.testing.assert_close(full(batch), without({k: batch[k] for k in kept}))


def test_perceiver_share_weights_reuses_layers():
    shared = build_model("perceiver", DIMS["perceiver"], BINS, {"depth": 4, "share_weights": True})
    separate = build_model("perceiver", DIMS["perceiver"], BINS, {"depth": 4})
    assert len(shared.layers) == 2 and shared.order == [0, 1, 1, 1]
    assert len(separate.layers) == 4 and separate.order == [0, 1, 2, 3]


@pytest.mark.parametrize(("name", "modality"), [("snn", "omics"), ("abmil", "wsi")])
def test_unimodal_model_rejects_sample_without_its_modality(name, modality):
    batch = make_batch([3, 3], **{modality: [True, False]})
    with pytest.raises(ValueError, match=rf"{name} uses only the {modality} modality, but samples \[1\]"):
        model(name)(batch)


@pytest.mark.parametrize("name", MULTIMODAL)
def test_sample_without_any_modality_is_an_error(name):
    batch = make_batch([3, 3], wsi=[True, False], omics=[True, False])
    with pytest.raises(ValueError, match=r"samples \[1\] of this batch have no modality present"):
        model(name)(batch)


def test_present_wsi_without_patches_is_an_error():
    batch = make_batch([3, 3])
    batch["wsi_mask"][0] = False
    with pytest.raises(ValueError, match=r"samples \[0\] are marked wsi-present but have no real patch"):
        model("abmil")(batch)


@pytest.mark.parametrize("name", ["snn", "porpoise", "mcat"])
def test_per_type_modalities_are_concatenated(name):
    """rnaseq + cnv as two modalities == the same columns as one omics modality."""
    one = model(name)
    dims = {k: v for k, v in DIMS[name].items() if k != "omics"} | {"rnaseq": 6, "cnv": 4}
    per_type = build_model(name, dims, BINS, feature_names=NAMES).eval()
    per_type.load_state_dict(one.state_dict())
    batch = make_batch([4, 6])
    split = {
        **batch,
        "rnaseq": batch["omics"][:, :6],
        "cnv": batch["omics"][:, 6:],
        "present": {
            "wsi": batch["present"]["wsi"],
            "rnaseq": batch["present"]["omics"],
            "cnv": batch["present"]["omics"],
        },
    }
    torch.testing.assert_close(per_type(split), one(batch))
    split["present"]["cnv"] = torch.tensor([True, False])
    with pytest.raises(ValueError, match=r"samples \[1\] have some of \['rnaseq', 'cnv'\] present"):
        per_type(split)


def test_mcat_groups_by_omic_type_without_signatures():
    assert group_by_type(["A_rnaseq", "B_cnv", "C_rnaseq", "D_mut", "age"]) == {
        "rnaseq": [0, 2],
        "cnv": [1],
        "mut": [3],
        "other": [4],
    }
    m = model("mcat")
    assert m.group_names == ["rnaseq", "cnv"]
    assert [len(net[0][0].weight.T) for net in m.sig_networks] == [6, 4]


def test_mcat_gene_families_match_published_blca_sizes(shared_data):
    """MCAT's group sizes on the real BLCA table are [102, 336, 518, 434, 199, 444] (data README)."""
    with zipfile.ZipFile(shared_data / "tcga/blca/clinical_omics.csv.zip") as zf, zf.open(zf.namelist()[0]) as fh:
        columns = list(pd.read_csv(fh, nrows=0).columns)
    names = {t: [c for c in columns if c.endswith(f"_{t}")] for t in ("rnaseq", "cnv", "mut")}
    dims = {"omics": sum(len(v) for v in names.values())}
    groups = omic_groups(dims, ["omics"], names, str(shared_data / "tcga/signatures.csv"))
    assert [len(v) for v in groups.values()] == [102, 336, 518, 434, 199, 444]
    assert list(groups)[0] == "Tumor Suppressor Genes"
    flat = [n for v in names.values() for n in v]
    assert {"TP53_mut", "TP53_rnaseq"} <= {flat[i] for i in groups["Tumor Suppressor Genes"]}


def test_mcat_signature_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"signatures file .*nope.csv not found"):
        build_model("mcat", DIMS["mcat"], BINS, {"signatures": str(tmp_path / "nope.csv")}, feature_names=NAMES)
    sig = tmp_path / "sig.csv"
    sig.write_text("Family A,Family B\nG1,XX\nG2,\n")
    m = build_model("mcat", DIMS["mcat"], BINS, {"signatures": str(sig)}, feature_names=NAMES)
    assert m.group_names == ["Family A"]  # Family B matches no column
    assert m.group0.tolist() == [1, 2, 7, 8]  # G1_rnaseq, G2_rnaseq, G1_cnv, G2_cnv
    with pytest.raises(ValueError, match=r"modality 'omics' has 10 features but feature_names give 6 names"):
        build_model("mcat", DIMS["mcat"], BINS, feature_names={"rnaseq": NAMES["rnaseq"]})


def test_wrong_modalities_are_config_errors():
    with pytest.raises(ValueError, match="snn is omics-only"):
        build_model("snn", {"wsi": D, "omics": F}, BINS)
    with pytest.raises(ValueError, match=r"abmil is WSI-only; its modalities must be \[wsi\]"):
        build_model("abmil", {"wsi": D, "omics": F}, BINS)
    with pytest.raises(ValueError, match="porpoise needs wsi and/or omics modalities, got none"):
        build_model("porpoise", {}, BINS)
    with pytest.raises(ValueError, match="mcat needs omics: its genomic tokens are the co-attention queries"):
        build_model("mcat", {"wsi": D}, BINS)


@pytest.mark.parametrize("name", list(DIMS))
def test_a_few_optimisation_steps_lower_the_nll_loss(name):
    """20 full-batch Adam steps on a tiny synthetic problem whose bin is planted in both modalities."""
    from healnet.survival.loss import nll_loss

    b = 24
    multimodal = name in MULTIMODAL
    batch = make_batch(
        [3 + i % 6 for i in range(b)],
        seed=2,
        wsi=[i % 5 != 1 for i in range(b)] if multimodal else None,
        omics=[i % 5 != 2 for i in range(b)] if multimodal else None,
    )
    bins = torch.arange(b) % BINS
    batch["omics"][:, 0] += bins.float()  # signal in the first omic feature
    batch["wsi"][:, :, 0] += bins.float()[:, None]  # ... and in every patch
    censorship = (torch.arange(b) % 3 == 0).float()
    m = model(name)
    with torch.no_grad():
        before = nll_loss(m.eval()(batch), bins, censorship).item()
    opt = torch.optim.Adam(m.parameters(), lr=3e-4)
    m.train()
    for _ in range(20):
        opt.zero_grad()
        nll_loss(m(batch), bins, censorship).backward()
        opt.step()
    with torch.no_grad():
        after = nll_loss(m.eval()(batch), bins, censorship).item()
    assert after < 0.9 * before, (before, after)
