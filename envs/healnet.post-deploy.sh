#!/usr/bin/env bash
# Snakemake runs this inside a freshly created envs/healnet.yaml env (--use-conda). It installs
# this repository's `healnet` package into it, editable (code changes apply without rebuilding
# the env) and without dependencies (the env file pins them). HEALNET_REPO is set by
# workflow/rules/common.smk to the repository that holds the Snakefile, so this works whatever
# --directory or --conda-prefix are.
set -euo pipefail
repo="${HEALNET_REPO:?HEALNET_REPO is not set: run through the workflow (workflow/rules/common.smk sets it) or export HEALNET_REPO=/path/to/healnet-pipeline}"
if [ ! -f "$repo/setup.cfg" ]; then
    echo "healnet.post-deploy.sh: $repo has no setup.cfg; HEALNET_REPO must be the healnet-pipeline repository root" >&2
    exit 1
fi
python -m pip install --quiet --no-deps --no-build-isolation --editable "$repo"
