"""One training step of the demo student (energy, force, atomic-energy and uncertainty losses),
through two checkouts of ekd, alternating A, B, A, B, ... in one run: a before/after comparison
of the Python-side model and its operators that machine drift cannot fake.

Each measurement is a child process whose PYTHONPATH selects the checkout (build its operators
in place first: `PYTHONPATH=CHECKOUT/python python -m ekd.plugin build` in that checkout). The
child builds the demo student (`[student]` defaults of that checkout) for the embedded CCSD(T)
data, takes a fixed random sample of its conformations, gives every atom fixed pseudo-random
force, atomic-energy and spread labels (their values do not change the work of a step), and
times `Trainer` epochs of `--steps` batches of 32 with `time.thread_time` on one thread; each
child reports the median step of `--epochs` epochs.

    python examples/bench/training_ab.py --a /tmp/before --b /tmp/after --repeats 3

Prints one line per measurement and the ratio A/B of the medians (above 1: B is faster).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--a", type=Path, required=True, help="checkout A (e.g. before)")
    parser.add_argument("--b", type=Path, required=True, help="checkout B (e.g. after)")
    parser.add_argument("--repeats", type=int, default=3, help="A, B rounds (default 3)")
    parser.add_argument("--steps", type=int, default=10, help="batches per timed epoch (default 10)")
    parser.add_argument("--epochs", type=int, default=9, help="timed epochs per child (default 9)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    return parser.parse_args()


def child(steps: int, epochs: int) -> dict:
    """Median seconds per training step of the demo student in the checkout on PYTHONPATH."""
    import numpy as np
    import torch

    from ekd.config import EMBEDDED_DATA, StudentSettings
    from ekd.data import DataSpec, GraphData, read_data
    from ekd.models import build_model
    from ekd.training import Trainer

    torch.set_num_threads(1)
    data = read_data(DataSpec(path=str(EMBEDDED_DATA), energy_key="ccsd(t)_dz.energy",
                              forces_key="ccsd(t)_dz.forces", energy_unit="Hartree"))
    elements = sorted({int(z) for z in data.species})
    settings = StudentSettings()
    torch.manual_seed(0)
    model = build_model(settings.kind, elements, settings.architecture(uncertainty=True)).to(torch.float32)
    rng = np.random.default_rng(0)
    n_atoms = len(data.species)
    energy = data.energy - data.n_atoms * (data.energy.sum() / n_atoms)  # near zero: a finite energy loss
    graph = GraphData(data, elements, model.cutoff, torch.float32,
                      atom_labels={"forces": rng.normal(0.0, 0.5, (n_atoms, 3)),
                                   "atom_energy": rng.normal(0.0, 0.1, n_atoms),
                                   "uncertainty": np.abs(rng.normal(0.0, 0.2, n_atoms)) + 0.01},
                      conformation_labels={"energy": energy})
    ids = rng.permutation(len(data.n_atoms))[:steps * 32]  # a fixed sample of every molecule
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(model, graph, ids, ids[:32], settings.train, Path(tmp), 0, "student", progress=False)
        repulsion = getattr(model, "core_repulsion", None)  # skipped in training where it exists
        with repulsion.skipping() if repulsion is not None else contextlib.nullcontext():
            trainer._train_epoch()  # warm-up
            times = []
            for _ in range(epochs):
                start = time.thread_time()
                trainer._train_epoch()
                times.append((time.thread_time() - start) / steps)
    return {"step_s": statistics.median(times), "min_s": min(times)}


def measure(checkout: Path, args: argparse.Namespace) -> dict:
    env = {**os.environ, "PYTHONPATH": str(checkout / "python")}
    out = subprocess.run([sys.executable, __file__, "--child", "--steps", str(args.steps), "--epochs",
                          str(args.epochs), "--a", ".", "--b", "."], env=env, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"{checkout}: the child failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    args = parse_args()
    if args.child:
        print(json.dumps(child(args.steps, args.epochs)))
        return
    results: dict = {"A": [], "B": []}
    for round_ in range(args.repeats):
        for label, checkout in (("A", args.a), ("B", args.b)):
            result = measure(checkout, args)
            results[label].append(result["step_s"])
            print(f"round {round_ + 1} {label} ({checkout}): median step {1e3 * result['step_s']:.2f} ms, "
                  f"fastest epoch {1e3 * result['min_s']:.2f} ms per step", flush=True)
    a, b = statistics.median(results["A"]), statistics.median(results["B"])
    print(f"A {1e3 * a:.2f} ms, B {1e3 * b:.2f} ms per step: A/B = {a / b:.2f}")


if __name__ == "__main__":
    main()
