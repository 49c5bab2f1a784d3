"""The model's explanation: attention on raw inputs (`attention.py`: scores, heatmaps, top features)
and the one inspection path (`patients.py`) that the cohort report (`healnet evaluate`) and the
paper figure (`healnet.paper.inspection`) both use."""
