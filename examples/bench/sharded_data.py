"""The sharded data path measured: `synthesize` makes a large ANI-1 style file from a real one,
`bench` times one process's index, read, neighbour pairs, GraphData and an epoch of batches
(peak memory and conformations/s; under torchrun each rank its shard), and whether caching
neighbour pairs on disk would pay off. Figures and commands: docs/distributed.md.

    python examples/bench/sharded_data.py synthesize ../shared/data/ani1_gdb_s01.h5 /tmp/synth_1m.h5
    python examples/bench/sharded_data.py bench /tmp/synth_1m.h5 [--whole]
    torchrun --nproc_per_node 2 examples/bench/sharded_data.py bench /tmp/synth_1m.h5
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import tempfile
import time
from pathlib import Path
from typing import List, Optional

import h5py
import numpy as np
import torch

from ekd.data import GraphData, read_data
from ekd.data.neighbors import Pairs
from ekd.data.readers import DataSpec, _conformation_groups
from ekd.data.sharded import HDF5Source, Holding, balanced_ranges, neighbor_pairs_in_chunks


def synthesize(source: Path, out: Path, n_conformations: int, noise: float = 0.01, seed: int = 0,
               group_size: int = 50_000) -> None:
    """An ANI-1 style file of `n_conformations`, made by replicating the conformations of
    `source` with Gaussian perturbations (`noise` Å, energies ± 1 mHa), in groups of at most
    `group_size` conformations, chunked so that row ranges read efficiently."""
    rng = np.random.default_rng(seed)
    with h5py.File(source, "r") as h5:
        molecules = [(g["species"][()], g["coordinates"][()], g["energies"][()]) for g in _conformation_groups(h5)
                     if "species" in g and len(g["coordinates"])]
    total = sum(len(c) for _, c, _ in molecules)
    with h5py.File(out, "w") as h5:
        top = h5.create_group("synthetic")
        made, k = 0, 0
        while made < n_conformations:
            species, coords, energies = molecules[k % len(molecules)]
            n = min(group_size, n_conformations - made, max(1, round(n_conformations * len(coords) / total)))
            pick = rng.integers(0, len(coords), size=n)
            g = top.create_group(f"mol{k:05d}")
            g["species"] = species
            g.create_dataset("coordinates", data=(coords[pick] + rng.normal(0, noise, (n,) + coords.shape[1:]))
                             .astype(np.float32), chunks=(min(n, 4096),) + coords.shape[1:])
            g.create_dataset("energies", data=energies[pick] + rng.normal(0, 1e-3, n), chunks=(min(n, 4096),))
            made, k = made + n, k + 1


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def bench(path: Path, cutoff: float, batch_size: int, whole: bool) -> dict:
    """Time the data path of one process (rank and world size from torchrun's environment):
    index, read of this rank's shard, neighbour pairs, GraphData, one epoch of batches of
    this rank's part of every global batch; and the neighbour-pair cache alternative."""
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    spec = DataSpec(path=str(path))
    times = {}
    t0 = time.perf_counter()
    if whole:
        data = read_data(spec)
        holding = Holding(0, len(data), len(data))
        times["index"] = 0.0
    else:
        source = HDF5Source(spec)
        times["index"] = time.perf_counter() - t0
        start, stop = balanced_ranges(source.n_atoms, world)[rank]
        holding = Holding(start, stop, len(source))
        data = source.read(start, stop)
    times["read"] = time.perf_counter() - t0
    t1 = time.perf_counter()
    pairs = neighbor_pairs_in_chunks(data, cutoff)
    times["pairs"] = time.perf_counter() - t1
    with tempfile.TemporaryDirectory() as folder:  # the alternative: pairs cached on disk, compactly
        cache = Path(folder) / "pairs.npz"
        np.savez(cache, receiver=pairs.receiver.astype(np.int16), sender=pairs.sender.astype(np.int16),
                 n_pairs=pairs.n_pairs.astype(np.int32))
        t1 = time.perf_counter()
        with np.load(cache) as saved:
            cached = Pairs(saved["receiver"].astype(np.int64), saved["sender"].astype(np.int64),
                           saved["n_pairs"].astype(np.int64))
        times["pairs_from_cache"] = time.perf_counter() - t1
        cache_mb = cache.stat().st_size / 1e6
    assert np.array_equal(cached.sender, pairs.sender)
    t1 = time.perf_counter()
    graph = GraphData(data, sorted({int(z) for z in np.unique(data.species)}), cutoff, torch.float32,
                      pairs=pairs)
    times["graph"] = time.perf_counter() - t1
    t1 = time.perf_counter()
    order = torch.randperm(holding.total, generator=torch.Generator().manual_seed(0))
    n_batched, n_batches = 0, 0
    for s in range(0, holding.total, batch_size):
        ids = order[s:s + batch_size]
        if holding.full and world > 1:
            ids = ids[len(ids) * rank // world:len(ids) * (rank + 1) // world]
        elif not holding.full:
            ids = ids[(ids >= holding.start) & (ids < holding.stop)] - holding.start
        batch = graph.batch(ids)
        n_batched += batch.n_conformations
        n_batches += 1
    times["batch_epoch"] = time.perf_counter() - t1
    return {"rank": rank, "world_size": world, "whole_file_reader": whole, "conformations_held": len(data),
            "atoms_held": data.n_total_atoms, "pairs_held": int(pairs.n_pairs.sum()),
            "seconds": {k: round(v, 3) for k, v in times.items()},
            "read_conformations_per_s": round(len(data) / times["read"]),
            "batch_conformations_per_s": round(n_batched / times["batch_epoch"]),
            "global_batches": n_batches, "pair_cache_mb": round(cache_mb, 1), "peak_rss_mb": round(_peak_rss_mb())}


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="examples/bench/sharded_data.py", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    make = sub.add_parser("synthesize", help="replicate an ANI-1 file's conformations into a large file")
    make.add_argument("source", type=Path)
    make.add_argument("out", type=Path)
    make.add_argument("--conformations", type=int, default=1_000_000)
    run = sub.add_parser("bench", help="measure the data path of this process (use torchrun for several)")
    run.add_argument("path", type=Path)
    run.add_argument("--cutoff", type=float, default=5.0)
    run.add_argument("--batch-size", type=int, default=256)
    run.add_argument("--whole", action="store_true", help="the whole-file reader (read_data) instead of shards")
    args = parser.parse_args(argv)
    if args.command == "synthesize":
        synthesize(args.source, args.out, args.conformations)
    else:
        print(json.dumps(bench(args.path, args.cutoff, args.batch_size, args.whole)), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
