#!/usr/bin/env python
"""Survival of finished runs' students and baselines in the active-learning loop's sampling MD:
the same starts (training molecules and water/methanol dimers of the embedded data, drawn as
`python -m ekd.learn examples/learn/embedded.toml` draws them), the same Langevin noise, the same
criterion (docs/learn.md), for every model — so runs trained on different data compare side by side.

    python examples/learn/sampled_survival.py RUN_DIR... [--config examples/learn/embedded.toml] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from ekd.config import load_config
from ekd.data import read_data, make_split
from ekd.distill.augment import Teachers
from ekd.learn.sampling import KINDS, run_dynamics, starting_structures
from ekd.models import load_model
from ekd.stability.criterion import FailureCriterion

HERE = Path(__file__).resolve().parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="finished run directories (student/ and baseline/)")
    parser.add_argument("--config", type=Path, default=HERE / "embedded.toml", help="the [learn] sampling settings")
    parser.add_argument("--out", type=Path, default=None, help="write the counts as JSON here")
    parser.add_argument("--seed", type=int, default=None,
                        help="draw other starts and noise than the loop's (default: the config's [run] seed, as the "
                             "loop does; its frames then trained round 1, so use another seed for a held-out check)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    config = load_config(args.config)
    data = read_data(config.data)
    train = make_split(data, config.split)["train"]
    seed = config.run.seed if args.seed is None else args.seed
    starts = starting_structures(data, train, config.learn, np.random.default_rng([seed, 11]))
    results = {}
    for run in args.runs:
        for name in ("student", "baseline"):
            model = load_model(run / name / "checkpoint.pt")
            teachers = Teachers([model], list(model.elements), torch.float32, "cpu")
            trajectories = run_dynamics(model.to(torch.float32), teachers, starts, config.learn, seed,
                                        FailureCriterion(), False, name)
            counts = {kind: [int((trajectories.failed_step[trajectories.start_kind == k] < 0).sum()),
                             int((trajectories.start_kind == k).sum())]
                      for k, kind in enumerate(KINDS) if (trajectories.start_kind == k).any()}
            results[f"{run}:{name}"] = counts
            print(run, name, counts, flush=True)
    if args.out:
        args.out.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
