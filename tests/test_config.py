"""The config: schema in sync with the models, friendly errors, --configfile merging."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from healnet.commands.schema import schema_text
from healnet.config import ConfigError, load_config, merge_into, parse_config


def test_repo_config_is_valid(repo):
    cfg = load_config(repo / "config.yaml")
    assert "demo" in cfg.cohorts
    assert cfg.patching.target_mpp == 0.5 and cfg.patching.patch_size == 224
    assert cfg.cohort_encoder("demo") in cfg.encoders


def test_schema_file_is_generated_from_models(repo):
    on_disk = (repo / "workflow/schemas/config.schema.yaml").read_text()
    assert on_disk == schema_text(), "run `healnet schema` after changing healnet/config.py"


@pytest.mark.parametrize(
    "section, key",
    [("tissue", "median_blurr_um"), ("patching", "patchsize"), ("training", "epoch"), ("omics", "clip")],
)
def test_typo_names_key_and_allowed_keys(repo, section, key):
    data = yaml.safe_load((repo / "config.yaml").read_text())
    data[section][key] = 1
    with pytest.raises(ConfigError) as err:
        parse_config(data)
    msg = str(err.value)
    assert f"unknown key '{section}.{key}'" in msg
    allowed = sorted(
        type(getattr(parse_config(yaml.safe_load((repo / "config.yaml").read_text())), section)).model_fields
    )
    assert ", ".join(allowed) in msg


def test_typo_in_cohort_lists_cohort_keys():
    with pytest.raises(ConfigError, match=r"unknown key 'cohorts.x.slide'; allowed keys here: clinical_omics"):
        parse_config({"cohorts": {"x": {"slide": "a.tsv"}}})


def test_unknown_model_or_encoder_is_an_error():
    with pytest.raises(ConfigError, match="unknown model 'healnett'"):
        parse_config({"cohorts": {"x": {"models": ["healnett"]}}})
    with pytest.raises(ConfigError, match="unknown encoder 'vit'"):
        parse_config({"cohorts": {"x": {"encoder": "vit"}}})


def test_extra_configfile_merges_recursively(repo, tmp_path):
    extra = tmp_path / "extra.yaml"
    extra.write_text("cohorts:\n  blca:\n    clinical_omics: t.csv.zip\ntraining:\n  epochs: 3\n")
    cfg = load_config(repo / "config.yaml", extra)
    assert {"demo", "blca", "brca"} <= set(cfg.cohorts)  # added, not replaced
    assert cfg.training.epochs == 3
    assert cfg.training.lr == load_config(repo / "config.yaml").training.lr  # siblings kept
    assert merge_into({"a": {"b": 1, "c": 2}}, {"a": {"b": 3}}) == {"a": {"b": 3, "c": 2}}


def test_cohort_training_overrides_only_its_keys(repo):
    cfg = load_config(repo / "config.yaml")
    demo = cfg.cohort_training("demo")
    assert (demo.epochs, demo.lr) == (40, 5e-4)  # config.yaml's demo override
    assert demo.batch_size == cfg.training.batch_size and demo.alpha == cfg.training.alpha
    raw = {"cohorts": {"x": {"clinical_omics": "t.csv"}}, "training": {"epochs": 7}}
    assert parse_config(raw).cohort_training("x").epochs == 7  # no override: the section itself
    raw["cohorts"]["x"]["training"] = {"epoch": 3}
    with pytest.raises(ConfigError, match=r"cohorts.x.training: epoch: Extra inputs .*allowed keys.*epochs"):
        parse_config(raw)
    raw["cohorts"]["x"]["training"] = {"lr": -1}
    with pytest.raises(ConfigError, match="cohorts.x.training: lr: Input should be greater than 0"):
        parse_config(raw)
    raw["cohorts"]["x"]["training"] = {"models": ["healnet"]}
    with pytest.raises(ConfigError, match="cohorts.x.models"):
        parse_config(raw)


def test_model_training_applies_after_the_cohort(repo):
    raw = {
        "cohorts": {"x": {"clinical_omics": "t.csv", "training": {"epochs": 40, "lr": 5e-4}}},
        "training": {"epochs": 7, "weight_decay": 0.01},
        "models": {
            "snn": {"architecture": "snn", "modalities": ["omics"], "training": {"lr": 1e-3}},
            "healnet": {"architecture": "healnet", "modalities": ["wsi", "omics"]},
        },
    }
    cfg = parse_config(raw)
    snn = cfg.model_training("x", "snn")
    assert (snn.epochs, snn.lr, snn.weight_decay) == (40, 1e-3, 0.01)  # cohort, then model, then `training`
    assert cfg.model_training("x", "healnet") == cfg.cohort_training("x")  # no model keys: the cohort's
    raw["models"]["snn"]["training"] = {"center_wsi_feature": True}
    with pytest.raises(
        ConfigError, match=r"models.snn.training: center_wsi_feature: Extra inputs.*center_wsi_features"
    ):
        parse_config(raw)
    shipped = load_config(repo / "config.yaml")
    for name in shipped.models:  # every shipped model's recipe resolves on the demo cohort
        assert shipped.model_training("demo", name).epochs >= 1


def _snakemake(repo: Path, *args: str) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).with_name("snakemake")
    return subprocess.run([str(exe), *args], cwd=repo, capture_output=True, text=True, timeout=120)


def test_workflow_rejects_typo_at_startup(repo, tmp_path):
    extra = tmp_path / "typo.yaml"
    extra.write_text("patching:\n  target_mmp: 0.5\n")
    result = _snakemake(repo, "-n", "--configfile", str(extra))
    assert result.returncode != 0
    out = result.stdout + result.stderr
    assert "unknown key 'patching.target_mmp'" in out and "allowed keys here:" in out and "target_mpp" in out


def test_workflow_accepts_added_cohort(repo, tmp_path):
    extra = tmp_path / "extra.yaml"
    extra.write_text(f"cohorts:\n  extra:\n    clinical_omics: {tmp_path}/t.csv\n")
    result = _snakemake(repo, "-n", "--configfile", str(extra), "--list-target-rules")
    assert result.returncode == 0, result.stderr


def test_a_target_read_as_configfile_gets_the_corrected_command():
    from healnet.config import targets_given_as_configfiles

    assert targets_given_as_configfiles(["my.yaml", "extra.yml", "c.json"]) is None
    msg = targets_given_as_configfiles(["my.yaml", "results/blca/cindex.tsv"])
    assert "`snakemake results/blca/cindex.tsv --configfile my.yaml`" in msg and "--configfile=my.yaml" in msg


def test_random_weights_are_flagged_for_real_cohorts_only(repo):
    """The shipped config: the synthetic demo may use random weights, the TCGA cohorts use pretrained
    ones; a real cohort given a random encoder is named (the workflow warns once at start-up)."""
    raw = yaml.safe_load((repo / "config.yaml").read_text())
    assert parse_config(raw).random_weight_cohorts() == []
    merge_into(
        raw, {"cohorts": {"blca": {"encoder": "resnet50_trunc_random"}, "demo": {"encoder": "resnet50_trunc_random"}}}
    )
    assert parse_config(raw).random_weight_cohorts() == [("blca", "resnet50_trunc_random")]
    merge_into(raw, {"cohorts": {"blca": {"wsi": False}}})  # omics only: no features at all
    assert parse_config(raw).random_weight_cohorts() == []
