"""healnet-pipeline: from TCGA whole-slide images and omics to multimodal survival models."""

__version__ = "0.1.0"
