"""HEALNet: missing modalities by masked residual, key-padding masks, attention retrieval, options."""

from __future__ import annotations

import pytest
import torch

from healnet.models import build_model

pytestmark = pytest.mark.usefixtures("single_thread")

D, F_OMICS = 12, 9


def make_model(**params):
    torch.manual_seed(0)
    dims = params.pop("dims", {"wsi": D, "omics": F_OMICS})
    return build_model("healnet", dims, 4, {"depth": 3, "num_latents": 8, "latent_dim": 16, **params}).eval()


def make_batch(b=4, n=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {
        "wsi": torch.randn(b, n, D, generator=g),
        "wsi_mask": torch.ones(b, n, dtype=torch.bool),
        "omics": torch.randn(b, F_OMICS, generator=g),
        "present": {"wsi": torch.ones(b, dtype=torch.bool), "omics": torch.ones(b, dtype=torch.bool)},
    }


def one(batch, i, drop=()):
    """Sample i alone, without the modalities in `drop` at all."""
    out = {"present": {}}
    for m in ("wsi", "omics"):
        if m in drop:
            continue
        out[m] = batch[m][i : i + 1]
        out["present"][m] = torch.ones(1, dtype=torch.bool)
    if "wsi" not in drop:
        out["wsi_mask"] = batch["wsi_mask"][i : i + 1]
    return out


@pytest.mark.parametrize("snn", [False, True])
def test_masking_a_modality_equals_running_without_it(snn):
    model = make_model(snn=snn)
    batch = make_batch()
    batch["present"]["wsi"] = torch.tensor([True, False, True, True])
    batch["present"]["omics"] = torch.tensor([True, True, False, True])
    with torch.no_grad():
        mixed = model(batch)
        alone = [
            model(one(batch, 0)),
            model(one(batch, 1, drop=("wsi",))),
            model(one(batch, 2, drop=("omics",))),
            model(one(batch, 3)),
        ]
    torch.testing.assert_close(mixed, torch.cat(alone), rtol=1e-5, atol=1e-6)
    # and the masked sample's output does not depend on whatever sits in its unused tensor
    batch["wsi"][1] = 1e6
    batch["omics"][2] = float("nan")
    with torch.no_grad():
        torch.testing.assert_close(model(batch), mixed, rtol=1e-5, atol=1e-6)


def test_padded_bag_equals_unpadded():
    model = make_model()
    batch = make_batch(b=1, n=7)
    padded = dict(batch)
    padded["wsi"] = torch.cat([batch["wsi"], torch.randn(1, 5, D) * 100], dim=1)
    padded["wsi_mask"] = torch.cat([batch["wsi_mask"], torch.zeros(1, 5, dtype=torch.bool)], dim=1)
    with torch.no_grad():
        torch.testing.assert_close(model(padded), model(batch), rtol=1e-5, atol=1e-6)
        _, att = model(padded, return_attention=True)
    for layer in att["wsi"]:
        assert torch.all(layer[0, 7:] == 0)
        assert layer[0, :7].sum().item() == pytest.approx(1.0, abs=1e-5)


def test_bags_of_different_length_in_one_batch_match_single_runs():
    model = make_model()
    a, b = make_batch(b=1, n=4, seed=1), make_batch(b=1, n=9, seed=2)
    batch = make_batch(b=2, n=9)
    batch["wsi"] = torch.zeros(2, 9, D)
    batch["wsi"][0, :4], batch["wsi"][1] = a["wsi"][0], b["wsi"][0]
    batch["wsi_mask"] = torch.zeros(2, 9, dtype=torch.bool)
    batch["wsi_mask"][0, :4], batch["wsi_mask"][1] = True, True
    batch["omics"] = torch.cat([a["omics"], b["omics"]])
    with torch.no_grad():
        torch.testing.assert_close(model(batch), torch.cat([model(a), model(b)]), rtol=1e-5, atol=1e-6)


def test_attention_path_equals_sdpa_path_and_is_per_modality_and_layer():
    model = make_model()
    batch = make_batch()
    batch["present"]["omics"] = torch.tensor([True, False, True, True])
    with torch.no_grad():
        plain = model(batch)
        logits, att = model(batch, return_attention=True)
    torch.testing.assert_close(plain, logits, rtol=1e-5, atol=1e-6)
    assert set(att) == {"wsi", "omics"} and len(att["wsi"]) == len(att["omics"]) == 3
    assert att["wsi"][0].shape == (4, 10) and att["omics"][2].shape == (4, F_OMICS)
    assert torch.isnan(att["omics"][1][1]).all() and not torch.isnan(att["omics"][1][0]).any()
    torch.testing.assert_close(att["omics"][0][0].sum(), torch.tensor(1.0))


def test_gradients_never_reach_an_absent_modality():
    model = make_model()
    model.train()
    batch = make_batch()
    batch["present"]["wsi"] = torch.zeros(4, dtype=torch.bool)
    model(batch).sum().backward()
    wsi_grads = [p.grad for n, p in model.named_parameters() if ".wsi." in n]
    assert wsi_grads and all(g is None for g in wsi_grads)
    omics_grads = [p.grad for n, p in model.named_parameters() if ".omics." in n]
    assert all(g is not None and g.abs().sum() > 0 for g in omics_grads)


def test_sample_without_any_modality_is_an_error():
    model = make_model()
    batch = make_batch()
    batch["present"]["wsi"][2] = False
    batch["present"]["omics"][2] = False
    with pytest.raises(ValueError, match=r"samples \[2\].*none of the model's modalities"):
        model(batch)


def test_share_weights_ties_layers_after_the_first():
    n_shared = sum(p.numel() for p in make_model(depth=4, share_weights=True).parameters())
    n_two = sum(p.numel() for p in make_model(depth=2, share_weights=True).parameters())
    n_free = sum(p.numel() for p in make_model(depth=4, share_weights=False).parameters())
    assert n_shared == n_two and n_free > n_shared
    m = make_model(depth=4)
    assert m.layers[1] is m.layers[3] and m.layers[0] is not m.layers[1]


@pytest.mark.parametrize("encoding", ["learned", "fourier"])
def test_feature_identity_makes_features_distinguishable(encoding):
    model = make_model(dims={"omics": F_OMICS}, feature_encoding=encoding)
    x = torch.randn(1, F_OMICS)
    with torch.no_grad():
        a = model({"omics": x})
        b = model({"omics": x[:, torch.randperm(F_OMICS, generator=torch.Generator().manual_seed(0))]})
    assert (a - b).abs().max() > 1e-4


def test_any_number_of_modalities_and_missing_key():
    dims = {"wsi": D, "rnaseq": 5, "cnv": 3, "mut": 4}
    model = make_model(dims=dims)
    g = torch.Generator().manual_seed(0)
    batch = {
        "wsi": torch.randn(2, 6, D, generator=g),
        "wsi_mask": torch.ones(2, 6, dtype=torch.bool),
        "rnaseq": torch.randn(2, 5, generator=g),
        "mut": torch.randn(2, 4, generator=g),
    }
    with torch.no_grad():
        out = model(batch)  # cnv not in the batch: absent for everyone
        batch["cnv"] = torch.randn(2, 3, generator=g)
        batch["present"] = {"cnv": torch.zeros(2, dtype=torch.bool)}
        torch.testing.assert_close(model(batch), out)
    assert out.shape == (2, 4) and torch.isfinite(out).all()


def test_attention_memory_is_linear_in_patches():
    """The largest allocation of the explicit-attention path grows ~linearly with N (nothing N x N)."""
    from torch.profiler import ProfilerActivity, profile

    model = make_model(dims={"wsi": 8}, heads=2, dim_head=8)
    mem = []
    for n in (2000, 8000):
        batch = {"wsi": torch.randn(1, n, 8), "wsi_mask": torch.ones(1, n, dtype=torch.bool)}
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof, torch.no_grad():
            model(batch, return_attention=True)
        mem.append(max(e.cpu_memory_usage for e in prof.key_averages()))
    assert 2 < mem[1] / mem[0] < 6  # 4x patches -> ~4x memory, far from the 16x of an N x N matrix


# --- the lean forward (issue 16): same math as the per-layer form --------------------------------


def reference_forward(model, batch):
    """HEALNet's forward in its per-layer form (the code before the lean forward): every layer
    norms and projects the whole bag itself, through `Attention.forward(s, context)`."""
    import torch.nn.functional as F

    b = next(batch[m] for m in model.modalities if m in batch).shape[0]
    present = model._present(batch, b, torch.device("cpu"))
    tokens = {}
    for m in model.modalities:
        if m == "wsi" and "wsi" in model.tokenizers:  # the shared projection, unfused
            proj = model.tokenizers["wsi"].proj
            tokens[m] = F.linear(F.layer_norm(batch[m], batch[m].shape[-1:]), proj.weight, proj.bias)
        elif m in batch:
            tokens[m] = batch[m] if m == "wsi" else model.tokenizers[m](batch[m])
    s = model.latents.unsqueeze(0).expand(b, -1, -1)
    for layer in model.layers:
        for m in model.modalities:
            idx = present[m].nonzero().flatten()
            if idx.numel() == 0:
                continue
            s_m, ctx = s.index_select(0, idx), tokens[m].index_select(0, idx)
            mask = batch.get(f"{m}_mask")
            mask = None if mask is None else mask.index_select(0, idx)
            s_m = s_m + layer.cross_attn[m](s_m, ctx, mask=mask)[0]
            s_m = s_m + layer.cross_ff[m](s_m)
            s = s.index_copy(0, idx, s_m)
        for attn, ff in zip(layer.self_attn, layer.self_ff):
            s = s + attn(s)[0]
            s = s + ff(s)
    return model.head(s.mean(dim=1))


@pytest.mark.parametrize("d", [12, 300])  # 300 > all layers' key/value sizes: the bag is never normed in place
@pytest.mark.parametrize("wsi_token_dim", [None, 8])
def test_lean_forward_equals_the_per_layer_form(d, wsi_token_dim):
    """Outputs and gradients equal the per-layer form, for raw-feature and projected patch tokens,
    with padding, missing modalities and shared layers (depth 3: layers 2 and 3 share weights)."""
    model = make_model(dims={"wsi": d, "omics": F_OMICS}, wsi_token_dim=wsi_token_dim)
    g = torch.Generator().manual_seed(3)
    batch = make_batch()
    batch["wsi"] = torch.randn(4, 10, d, generator=g).abs() * 3  # non-negative, mean > 0, like real features
    batch["wsi_mask"][0, 6:] = False
    batch["present"]["wsi"] = torch.tensor([True, False, True, True])
    batch["present"]["omics"] = torch.tensor([True, True, False, True])
    lean = model(batch)
    grads = torch.autograd.grad(lean.sum(), list(model.parameters()), allow_unused=True)
    ref = reference_forward(model, batch)
    ref_grads = torch.autograd.grad(ref.sum(), list(model.parameters()), allow_unused=True)
    torch.testing.assert_close(lean, ref, rtol=1e-5, atol=1e-5)
    for (name, _), a, r in zip(model.named_parameters(), grads, ref_grads):
        assert (a is None) == (r is None), name
        if a is not None:
            torch.testing.assert_close(a, r, rtol=1e-4, atol=1e-5, msg=name)


@pytest.mark.parametrize("d, widths", [(64, [16, 8]), (8, [16, 16])])  # normed copy avoided / formed
@pytest.mark.parametrize("offset", [0.0, 1e3])  # 1e3: mean >> spread, where E[x^2] - mean^2 cancels
def test_normed_linears_equal_layer_norm_then_linear(d, widths, offset):
    import torch.nn.functional as F

    from healnet.models.attention import normed_linears

    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 5, d, generator=g) + offset
    params = [
        (torch.randn(k, d, generator=g, requires_grad=True), torch.randn(k, generator=g, requires_grad=True))
        for k in widths
    ]
    outs = normed_linears(x, params)
    ref = [F.linear(F.layer_norm(x, (d,)), w, b) for w, b in params]
    for o, r in zip(outs, ref):
        assert o.shape == r.shape
        torch.testing.assert_close(o, r, rtol=1e-4, atol=1e-4)
    leaves = [t for p in params for t in p]
    got = torch.autograd.grad(sum((o * (i + 1)).sum() for i, o in enumerate(outs)), leaves)
    want = torch.autograd.grad(sum((r * (i + 1)).sum() for i, r in enumerate(ref)), leaves)
    for a, r in zip(got, want):
        torch.testing.assert_close(a, r, rtol=1e-4, atol=1e-3)


def test_wsi_token_dim_projects_patches_once_to_small_tokens():
    """wsi_token_dim=64 tokenises a patch by one projection shared by all layers; every layer's WSI
    cross-attention reads those 64-d tokens, and attention still scores each patch. The default
    keeps the raw features as tokens."""
    model = make_model(depth=2, wsi_token_dim=64)
    assert model.tokenizers["wsi"].proj.weight.shape == (64, D)
    assert all(layer.cross_attn["wsi"].norm_context.normalized_shape == (64,) for layer in model.layers)
    raw = make_model(depth=2)
    assert "wsi" not in raw.tokenizers and raw.layers[0].cross_attn["wsi"].norm_context.normalized_shape == (D,)
    with torch.no_grad():
        _, att = model(make_batch(b=2, n=7), return_attention=True)
    assert att["wsi"][1].shape == (2, 7)


def test_an_absent_sample_bag_never_enters_the_gradients():
    """A WSI-absent sample's bag may hold anything (here NaN): it is never read, so outputs and
    gradients stay finite."""
    model = make_model()
    model.train()
    batch = make_batch()
    batch["present"]["wsi"] = torch.tensor([True, False, True, True])
    batch["wsi"][1] = float("nan")
    model(batch).sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_linear_skip_starts_as_the_plain_model_and_shifts_every_bin_alike():
    dims = {"omics": F_OMICS, "clinical": 2}
    plain, skip = make_model(dims=dims), make_model(dims=dims, linear_skip=["clinical"])
    assert skip.load_state_dict(plain.state_dict(), strict=False).missing_keys == [
        "skip.clinical.weight",
        "skip.clinical.bias",
    ]
    g = torch.Generator().manual_seed(1)
    batch = {"omics": torch.randn(4, F_OMICS, generator=g), "clinical": torch.randn(4, 2, generator=g)}
    batch["present"] = {"omics": torch.ones(4, dtype=torch.bool), "clinical": torch.tensor([True, True, False, True])}
    batch["clinical"][2] = float("nan")  # an absent sample's values are never read
    with torch.no_grad():
        torch.testing.assert_close(skip(batch), plain(batch))  # zero-initialised: the plain model
        skip.skip["clinical"].weight.copy_(torch.tensor([[0.5, -1.0]]))
        shift = skip(batch) - plain(batch)
    expected = batch["clinical"] @ torch.tensor([0.5, -1.0])
    torch.testing.assert_close(shift[[0, 1, 3]], expected[[0, 1, 3]].unsqueeze(1).expand(3, 4))
    assert torch.equal(shift[2], torch.zeros(4))  # absent: no shift
    scaled = make_model(dims=dims, linear_skip=["clinical"], linear_skip_scale=10.0)
    scaled.load_state_dict(skip.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(scaled(batch) - plain(batch), 10.0 * shift)
    with pytest.raises(ValueError, match="linear_skip"):
        make_model(dims=dims, linear_skip=["wsi"])
