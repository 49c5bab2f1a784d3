"""Synthetic demo cohort with real file formats and a planted signal.

`cohort`: patients, survival, omics table, missing modalities (the signal is documented there);
`slides`: H&E-like pyramidal SVS/TIFF slides that OpenSlide opens with their mpp;
`inprocess`: every stage of the pipeline on the demo in one process (`run_demo`), for tests and benches.
"""
