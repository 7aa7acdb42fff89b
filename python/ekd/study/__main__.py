"""`python -m ekd.study [CONFIG] --out DIR [--seeds 3] [--set KEY=VALUE] [--variant NAME:KEY=VALUE;...]`:
the whole method over several independent pipeline seeds, as mean ± spread.

One result of one seed can be noise. A study runs `python -m ekd.train` once per seed (its
`[run] seed` set to base, base + step, ...; teachers, labels, student and baseline all new) and,
per seed and per variant, trains other students on that seed's teachers (`--teachers-from`).
A variant is a name and config overrides, e.g.
`--variant "atom energies:student.train.atom_energy_weight=0.1;baseline.enabled=false"`.
The test split is the config's own (its `[split] seed` is not changed), so every seed is
measured on the same conformations.

Writes DIR/seed_S (runs), DIR/seed_S-VARIANT, DIR/logs/*.log (each run's output) and
DIR/study.md + DIR/study.json: every model's test errors as mean ± sample standard deviation
over the seeds, and the per-seed student / baseline ratios. Interrupted? Run the same command
again: finished runs are kept, unfinished ones resume from their checkpoints.

Exit codes: 0 every run finished; 1 some run failed (the others and the report are kept; the
message names its log); 2 bad input.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from pathlib import Path
from typing import Sequence

from ..config import DEFAULT_CONFIG, load_config
from ..errors import ConfigError, EkdError
from ..fileio import atomic_write_text
from .plan import DEFAULT_SEED_STEP, parse_variant, plan, with_overrides
from .report import collect, markdown
from .running import run_all


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m ekd.study", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("config", nargs="?", type=Path, default=None,
                        help=f"run configuration (default: the demo, {DEFAULT_CONFIG.name})")
    parser.add_argument("--out", type=Path, required=True, help="study directory")
    parser.add_argument("--seeds", type=int, default=3, help="independent pipeline seeds (default 3)")
    parser.add_argument("--seed-step", type=int, default=DEFAULT_SEED_STEP,
                        help=f"distance between the seeds' [run] seed values (default {DEFAULT_SEED_STEP}; "
                             "starts at the config's seed)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                        help="config override for every run of the study, e.g. teachers.members=[] (repeatable)")
    parser.add_argument("--variant", action="append", default=[], metavar="NAME:KEY=VALUE;...",
                        help="another student per seed, trained on that seed's teachers with these config "
                             "overrides (repeatable)")
    parser.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1),
                        help="runs at once (default: min(2, cores))")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch threads per run (default 0: cores / jobs); 1 when other work shares the cores")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        if args.seeds < 1 or args.jobs < 1 or args.seed_step < 1 or args.threads < 0:
            raise ConfigError("--seeds, --jobs and --seed-step must be positive, --threads not negative")
        config = load_config(args.config)
        if args.overrides:
            config = with_overrides(config, parse_variant("--set:" + ";".join(args.overrides)).overrides, "--set")
        variants = [parse_variant(v) for v in args.variant]
        if len({v.name for v in variants}) != len(variants):
            raise ConfigError("two --variant options have the same name")
        seeds = [config.run.seed + i * args.seed_step for i in range(args.seeds)]
        threads = args.threads if args.threads > 0 else max(1, (os.cpu_count() or 1) // args.jobs)
        tasks = plan(config, seeds, variants, threads)
    except EkdError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for folder in ("logs", "configs"):
        (args.out / folder).mkdir(parents=True, exist_ok=True)
    print(f"study: {len(seeds)} seeds ({', '.join(map(str, seeds))}) × {1 + len(variants)} runs, {args.jobs} at "
          f"once with {threads} thread(s) each; logs in {args.out / 'logs'}", flush=True)
    run_all(tasks, args.out, args.jobs, lambda line: print(line, flush=True))
    report = collect(tasks, args.out)
    command = "python -m ekd.study " + shlex.join(sys.argv[1:] if argv is None else argv)
    report["command"] = command
    atomic_write_text(args.out / "study.json", json.dumps(report, indent=1) + "\n")
    table = markdown(report, command)
    atomic_write_text(args.out / "study.md", table)
    print(table, flush=True)
    failed = [t.name for t in tasks if t.state == "failed"]
    if failed:
        print(f"error: {len(failed)} run(s) failed: {', '.join(failed)}; their logs are in {args.out / 'logs'}",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
