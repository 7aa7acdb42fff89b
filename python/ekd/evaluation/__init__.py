"""Evaluation: error metrics per model and split, parity plots; `python -m ekd.evaluate` (models
on a data file, with ensemble calibration and a forces sign check) and `python -m ekd.stability`
(MD failure criterion and survival)."""

from .metrics_table import METRIC_KEYS, mean_prediction, split_metrics
from .plots import parity_plots

__all__ = ["METRIC_KEYS", "mean_prediction", "split_metrics", "parity_plots"]
