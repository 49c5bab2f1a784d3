"""healnet-pipeline: from TCGA whole-slide images and omics to multimodal survival models."""

__version__ = "0.1.0"


def load_run(path, device="cpu"):
    """A trained run folder (`results/{cohort}/models/{model}/fold{k}`) ready to score new patients:
    `healnet.load_run(path).predict(omics=..., features=..., sheet=...)` (see `healnet.inference`)."""
    from healnet.inference import load_run as _load_run

    return _load_run(path, device)
