"""Evaluation: error metrics per model and split, parity plots."""

from .metrics_table import METRIC_KEYS, mean_prediction, split_metrics
from .plots import parity_plots

__all__ = ["METRIC_KEYS", "mean_prediction", "split_metrics", "parity_plots"]
