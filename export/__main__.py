"""`python -m ekd.export RUN_DIR|CHECKPOINT --model NAME -o FILE [--dtype float32|float64]
[--whole-edges N] [--block-edges N]`.

NAME is `student` (default), `baseline`, `teacher_K`, or `ensemble` (all teachers as one
module: mean energy and forces, plus every member's through its `members` method). A model with
more than one layer evaluates graphs of more than --whole-edges edges in blocks of about
--block-edges (CONTRACT.md §2d): far less memory, about 1.5× the time per atom.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

import torch

from ekd.errors import EkdError
from ekd.run_layout import checkpoints_for

from .blocks import BLOCK_EDGES, WHOLE_EDGES
from .compile import export_model


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ekd.export", description=__doc__.split("\n\n")[0])
    parser.add_argument("source", type=Path, help="run directory (or one checkpoint.pt)")
    parser.add_argument("--model", default="student",
                        help="student (default) | baseline | teacher_K | ensemble")
    parser.add_argument("-o", "--output", type=Path, required=True, help="TorchScript file to write")
    parser.add_argument("--dtype", choices=("float32", "float64"), default="float64",
                        help="precision of the exported model (default float64)")
    parser.add_argument("--whole-edges", type=int, default=WHOLE_EDGES,
                        help=f"graphs of up to N edges run whole, larger ones in blocks (default {WHOLE_EDGES}; "
                             "0: always in blocks; pair_style ekd ... blocks yes|no overrides it)")
    parser.add_argument("--block-edges", type=int, default=BLOCK_EDGES,
                        help=f"edges per block (default {BLOCK_EDGES})")
    args = parser.parse_args(argv)
    if args.whole_edges < 0 or args.block_edges < 1:
        parser.error("--whole-edges must be >= 0 and --block-edges >= 1")
    try:
        paths = checkpoints_for(args.source, args.model)
        meta = export_model(paths, args.output, getattr(torch, args.dtype), args.whole_edges, args.block_edges)
    except EkdError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {args.output}: {meta.model_kind} ({meta.members} member(s)), elements "
          f"{' '.join(meta.elements)}, cutoff {meta.cutoff} Å, receptive field {meta.receptive_field} Å, "
          f"{meta.dtype}; verified against the eager model")
    return 0


if __name__ == "__main__":
    sys.exit(main())
