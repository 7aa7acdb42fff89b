"""Which of the student's MD frames go to the oracle.

Two reasons to pick a frame: the teachers disagree on it (its largest per-atom committee force
deviation in the window (`threshold`, `threshold_max`]: the dynamics left what the teachers
knew, but not so far that the geometry is beyond repair; for clusters carved from boxes the
upper bound is `carve_threshold_max`), or it is the last frame within the
window's upper bound before its trajectory failed the stability criterion (the student went
wrong soon after it). Per trajectory at most `per_trajectory` frames — the frame before the
failure first, then the most disagreed-on frames at least 5 frames apart (`md_every` or, in
boxes, `box_every` steps between frames; so that two picks are not near-copies); then at most
`budget` over the round, frames before a failure first, then by deviation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List

import numpy as np

from ..config import LearnSettings
from ..errors import EkdError
from .sampling import BOX, Trajectories

BEFORE_FAILURE, DISAGREEMENT = 0, 1
REASONS = ("before_failure", "disagreement")
MIN_GAP_FRAMES = 5


@dataclass
class Selection:
    """Frames chosen for the oracle (indices into the trajectories' frames) and why."""

    frames: np.ndarray
    reason: np.ndarray
    over_threshold: int    # frames whose deviation lies in the window (before the caps)
    before_failure: int    # failed trajectories with a frame before the failure


def window_tops(trajectories: Trajectories, settings: LearnSettings) -> np.ndarray:
    """Each frame's upper bound of the deviation window: `carve_threshold_max` for clusters
    carved from boxes, `threshold_max` for the rest."""
    carved = trajectories.start_kind[trajectories.trajectory] == BOX
    return np.where(carved, settings.carved_threshold_max, settings.threshold_max)


def select_frames(trajectories: Trajectories, deviation: np.ndarray, settings: LearnSettings) -> Selection:
    """The round's oracle calls; refuses (naming the keys) when nothing can be selected."""
    picks: List[tuple[int, int, float]] = []   # (frame, reason, deviation)
    before = 0
    tops = window_tops(trajectories, settings)
    for t in range(len(trajectories.failed_step)):
        rows = np.flatnonzero(trajectories.trajectory == t)
        chosen: List[int] = []
        trusted = rows[deviation[rows] <= tops[rows]]   # frames are in step order
        gap = MIN_GAP_FRAMES * (settings.box_frame_every if trajectories.start_kind[t] == BOX else settings.md_every)
        if trajectories.failed_step[t] >= 0 and len(trusted):
            chosen.append(int(trusted[-1]))
            picks.append((int(trusted[-1]), BEFORE_FAILURE, float(deviation[trusted[-1]])))
            before += 1
        for row in trusted[np.argsort(-deviation[trusted], kind="stable")]:
            if len(chosen) >= settings.per_trajectory or deviation[row] <= settings.threshold:
                break
            if all(abs(int(trajectories.step[row]) - int(trajectories.step[c])) >= gap for c in chosen):
                chosen.append(int(row))
                picks.append((int(row), DISAGREEMENT, float(deviation[row])))
    over = int(np.count_nonzero((deviation > settings.threshold) & (deviation <= tops)))
    if not picks:
        largest = float(deviation.max()) if len(deviation) else float("nan")
        raise EkdError(f"[learn] nothing to select: no trajectory failed and no frame's committee deviation lies "
                       f"between threshold = {settings.threshold:g} and threshold_max = {settings.threshold_max:g} "
                       f"eV/Å (carved clusters: carve_threshold_max = {settings.carved_threshold_max:g}; the largest is "
                       f"{largest:.3g} eV/Å); widen the window, or the student's dynamics "
                       "already stay where the teachers agree")
    order = sorted(range(len(picks)), key=lambda k: (picks[k][1], -picks[k][2]))[: settings.budget]
    order.sort(key=lambda k: picks[k][0])
    return Selection(np.array([picks[k][0] for k in order], dtype=np.int64),
                     np.array([picks[k][1] for k in order], dtype=np.int64), over, before)
