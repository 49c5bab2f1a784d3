"""The paper's tables and figures, rebuilt from the pipeline's outputs (target rule `paper`).

- `cohort.py`: per cohort, every paper model evaluated by `healnet.evaluate` plus the Table 2 XOR
  baseline (the matching unimodal model per test patient) and the attention inspection;
- `tables.py`: Table 1 (c-index mean +- std, models x cohorts, published values beside) and
  Table 2 (missing modalities at inference);
- `figures.py`: Figure 2 (percentage uplift of each multimodal model over the best unimodal one);
- `inspection.py`: Figure 3 (slide heatmap of mean patch attention, top omic features, top tiles);
- `published.tsv`: the published c-index values with their sources.
"""
