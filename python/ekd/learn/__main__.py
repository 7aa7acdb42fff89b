"""`python -m ekd.learn CONFIG --out DIR [--rounds K] [--resume]`: active learning.

Round 0 runs the EKD method on the data of CONFIG; every further round samples MD with the
current student, sends the frames where the teachers disagree (and those just before a
trajectory failed) to the oracle of `[learn]`, adds its labels to the data and retrains.
Every round is kept in DIR/round_k/; DIR/learn.md reports them. The loop, read top-down:
ekd/learn/loop.py; every option: docs/learn.md and the [learn] table of docs/config.md.

Exit codes: 0 done; 2 bad input or configuration (the message names the file or key);
130 interrupted (continue with --resume: nothing finished is computed again).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

from ..config import load_config
from ..errors import EkdError
from .loop import run_learning


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m ekd.learn", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("config", type=Path, help="run configuration (TOML) with a [learn] table")
    parser.add_argument("--out", type=Path, required=True, help="active-learning directory")
    parser.add_argument("--rounds", type=int, default=None,
                        help="rounds after round 0 (default: [learn] rounds); a resumed run may ask for more")
    parser.add_argument("--resume", action="store_true", help="continue a run in --out (same configuration)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars or progress lines")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        config = load_config(args.config)
        report = run_learning(config, args.out, args.rounds, args.resume, progress=not args.quiet)
    except EkdError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted; continue with --resume", file=sys.stderr)
        return 130
    print((args.out / "learn.md").read_text())
    print(f"wrote {args.out / 'learn.md'}, learn.json and learn.png ({len(report['rounds']) - 1} rounds)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
