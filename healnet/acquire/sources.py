"""Where a cohort's downloads come from and where they land: the pinned tables of known TCGA projects.

The defaults are the tables the HEALNet authors used: mahmoodlab/PORPOISE at commit
3390dc40 (the same bytes as konst-int-i/healnet's Git LFS objects; see ../shared/data/tcga/README.md).
They come from GitHub's raw file host, which serves these files directly (they are not in LFS).
Every download is verified against a sha256 pinned here or in the config. This module imports nothing
of the package: the config (healnet/config.py) fills in a cohort's defaults from it.
"""

from __future__ import annotations

from dataclasses import dataclass

PORPOISE_COMMIT = "3390dc40e15995ba852d7a561faf0e996cf20501"
PORPOISE_RAW = f"https://raw.githubusercontent.com/mahmoodlab/PORPOISE/{PORPOISE_COMMIT}"


@dataclass(frozen=True)
class PinnedTables:
    clinical_omics_sha256: str
    splits_sha256: tuple[str, ...]


# sha256 of datasets_csv_mutsig/tcga_<c>_all_clean.csv.zip and splits/5foldcv/tcga_<c>/splits_<k>.csv.
PORPOISE: dict[str, PinnedTables] = {
    "TCGA-BLCA": PinnedTables(
        "d432e00dca23c4c7bc7ad574c69f67dd4e3a4656a2d695ac3420427569e52728",
        (
            "35713c1adde0c08e24fe54162242ae91e1711fe295f0fb43f9bb06d7c6b1fb01",
            "224e3442f16284fabb6ac586881e2f196eb5a9e9bbbb9bcb5bd61295c15c34cd",
            "44e16945cc3ee88a9459fd9fcc55a6eb7384e28def48f1d3c16f486e292c5311",
            "3c811ebffab6ea3f386870c834a5d7e90396381b9e951da440bf1335e78cce0b",
            "504f616774e136f3c18fde869073d36ea277eea0d995ea3e3df9ed88c21378fc",
        ),
    ),
    "TCGA-BRCA": PinnedTables(
        "4bc9de58ef6e8f8f7566fef6512c6c7db62cb827e4117b6f356d679e26e3e5f8",
        (
            "cd0fef824431ac396ed75ac93203a5d64d65ee419746be981789ba1dfabd4d0d",
            "2dee790eafe66d0c9b9d91a82eaa98f28a91471c6817ff215e28ee231c18c3d2",
            "4e9572ba7d1c8ca1adaacd159b74479a5aa71f4604d91f138ce00fbb1ca57008",
            "751ce860ba1669ee4a8b570fc9984c8f93cade89db02397eeb64c5e001310c93",
            "7bb014ec7cae42bddebd0bd116879515252a57785468d6b6489933b6f70bc2a5",
        ),
    ),
    "TCGA-KIRP": PinnedTables(
        "066ad4897a24aa887d15e3167dd5fd42a98c068c66e6df07066d0f0dbc3d2825",
        (
            "dac4a8b96581479d311620626e08f69f54e6f6fe6f809dbf4710350b64818e56",
            "9a7f1847613c8387cc002420ad55e0e1d717373657401d428ec2eba926271e0e",
            "dde5bdbb5adc696606459c8b0d79615f3407a4e01947585602a35908fdd4182a",
            "4abaad28b98d265be5164ffb6275920a42f5b2bf6b8abbe371025d6162fd36e1",
            "c630516a27ae398b23a16dfe789b23dc8ddc900d5699c3f88c3db1bc32bdb96d",
        ),
    ),
    "TCGA-UCEC": PinnedTables(
        "e5f672279115dcd7bcad0ee560730fcde37aaed683a08660bc845c790e424c44",
        (
            "5825f3dd86a2a07f72264879f02e22ed8e24af9bd34e758a2ab98fb1b06076f3",
            "28690792775373ff0ba341071fe68320b29843f3296dd5f20c025166f5f5f514",
            "674e1d97eb46bbd5d42d33d683c221351abcfb23ac92e10eaac034564c0eacd1",
            "14d2ed83adb34b51cbe53d8ee2723e060f974b9b51c82e3408a08497c83b8d31",
            "860fa1b0e63b3c61fa11c56ae67dc12755115bb7671caf30454b9d278f370bc6",
        ),
    ),
}


def porpoise_urls(project: str) -> tuple[str, str]:
    """(clinical + omics table URL, splits URL template with {k}) of a TCGA project in PORPOISE."""
    short = project.removeprefix("TCGA-").lower()
    return (
        f"{PORPOISE_RAW}/datasets_csv_mutsig/tcga_{short}_all_clean.csv.zip",
        f"{PORPOISE_RAW}/splits/5foldcv/tcga_{short}/splits_{{k}}.csv",
    )


def gdc_sheet_path(name: str) -> str:
    return f"data/{name}/slides.tsv"


def fetched_table_path(name: str) -> str:
    return f"data/{name}/clinical_omics.csv.zip"


def fetched_splits_dir(name: str) -> str:
    return f"data/{name}/splits"


# Gene families of MCAT and PORPOISE (datasets_csv/signatures.csv at the same commit): one column of
# gene symbols per family (tumour suppressors, oncogenes, ...), read by models with `signatures`.
SIGNATURES_URL = f"{PORPOISE_RAW}/datasets_csv/signatures.csv"
SIGNATURES_SHA256 = "6bf0a195a67a04774df3fec808748e06a87176506b17d3cd1e8e9049d2624477"
REFERENCE_DIR = "data/reference"


def reference_path(name: str) -> str:
    """Where the pinned reference file `name` (a key of the config's `reference_files`) lands."""
    return f"{REFERENCE_DIR}/{name}"
