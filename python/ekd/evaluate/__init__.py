"""`python -m ekd.evaluate`: errors of models on a data file (`run.py`, command line in
`__main__.py`): energies and forces, ensemble calibration (`error_metrics.py`), the forces sign
check (`force_sign.py`), every model's predictions through one interface (`model_outputs.py`).
The metrics per model and split and the parity plots are also what the run summary uses."""

from .metrics_table import METRIC_KEYS, fit_uncertainty_scale, mean_prediction, split_metrics, uncertainty_calibration
from .plots import parity_plots

__all__ = ["METRIC_KEYS", "fit_uncertainty_scale", "mean_prediction", "split_metrics", "uncertainty_calibration",
           "parity_plots"]
