"""Modality names: what a model's `modalities` lists, and the keys of a batch's tensors and `present`."""

from __future__ import annotations

WSI = "wsi"
OMICS = "omics"  # all omic types of the table concatenated (not the clinical columns)
CLINICAL = "clinical"  # age, is_female (omics.clinical_features)
OMIC_TYPES = ("rnaseq", "cnv", "mut")  # column suffixes of the TCGA table; each is also a modality
MODALITIES = (WSI, OMICS, *OMIC_TYPES, CLINICAL)
