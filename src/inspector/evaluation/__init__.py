"""Measuring a fitted model on labelled images: the metrics, and scoring a test set the way the line would.

metrics.py   AUROC, F1 max, AUPRO (numpy, no model)
scoring.py   the one per-image scoring loop evaluate and calibrate share
evaluate.py  test-set scoring and the metrics report
"""
