"""Synthetic demo cohort with real file formats and a planted signal.

`cohort`: patients, survival, omics table, missing modalities (the signal is documented there);
`slides`: H&E-like slide painting (written as SVS/TIFF by healnet/wsi/synthetic.py);
`inprocess`: the workflow's jobs for the demo, planned by Snakemake, run in one process (`run_demo`),
for tests and benches.
"""
