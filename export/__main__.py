"""`python -m ekd.export RUN_DIR|CHECKPOINT --model NAME -o FILE [--dtype float32|float64]`.

NAME is `student` (default), `baseline`, `teacher_K`, or `ensemble` (all teachers as one
module: mean energy and forces, plus every member's through its `members` method).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

import torch

from ekd.errors import EkdError
from ekd.run_layout import checkpoints_for

from .compile import export_model

def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ekd.export", description=__doc__.split("\n\n")[0])
    parser.add_argument("source", type=Path, help="run directory (or one checkpoint.pt)")
    parser.add_argument("--model", default="student",
                        help="student (default) | baseline | teacher_K | ensemble")
    parser.add_argument("-o", "--output", type=Path, required=True, help="TorchScript file to write")
    parser.add_argument("--dtype", choices=("float32", "float64"), default="float64",
                        help="precision of the exported model (default float64)")
    args = parser.parse_args(argv)
    try:
        paths = checkpoints_for(args.source, args.model)
        meta = export_model(paths, args.output, getattr(torch, args.dtype))
    except EkdError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {args.output}: {meta.model_kind} ({meta.members} member(s)), elements "
          f"{' '.join(meta.elements)}, cutoff {meta.cutoff} Å, receptive field {meta.receptive_field} Å, "
          f"{meta.dtype}; verified against the eager model")
    return 0


if __name__ == "__main__":
    sys.exit(main())
