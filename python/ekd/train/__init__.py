"""`python -m ekd.train`: the EKD method (`method.py`, read top-down) and its command line
(`__main__.py`)."""

from .method import STAGES, run_stages

__all__ = ["STAGES", "run_stages"]
