"""Active learning: grow the reference data where the distilled student's dynamics go
(`python -m ekd.learn`; the loop, read top-down: ekd/learn/loop.py)."""
