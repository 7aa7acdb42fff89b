"""`python -m ekd.study`: the whole method over several seeds, mean ± SD (command line in
`__main__.py`; `plan.py` what runs, `running.py` running it, `report.py` the report)."""

from .plan import Task, Variant, parse_variant, plan
from .report import collect, markdown, mean_spread

__all__ = ["Task", "Variant", "parse_variant", "plan", "collect", "markdown", "mean_spread"]
