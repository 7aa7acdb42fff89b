"""`python -m ekd.evaluate MODEL... --data FILE [options]`: errors of trained models on a data file.

MODEL is an exported file (`python -m ekd.export` output) or an ekd checkpoint (`checkpoint.pt`,
or the folder holding it); several models are compared in one report. Writes report.json,
report.md and parity / calibration plots (PNG) to --out (default `evaluation/`). Every option,
metric and the forces sign check: docs/evaluate.md.

Exit codes: 0 all models evaluated; 1 the report is written but a model failed (NaN or error,
named in the report); 2 bad input (nothing written).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

import torch

from ..data import DataSpec
from ..data.readers import FORMATS
from ..errors import EkdError
from .run import EvaluationRequest, markdown_report, run_evaluation


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m ekd.evaluate", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("models", nargs="+", type=Path, metavar="MODEL",
                        help="exported model files and/or checkpoints (checkpoint.pt or its folder)")
    parser.add_argument("--data", type=Path, required=True, help="the data file to evaluate on")
    parser.add_argument("--format", default="auto", choices=FORMATS, help="data layout (default: by extension)")
    parser.add_argument("--energy-key", default="", help="energy property (default: the layout's)")
    parser.add_argument("--energy-unit", default="", help="unit of the file's energies (default: the layout's)")
    parser.add_argument("--length-unit", default="", help="unit of the file's positions (default Angstrom)")
    parser.add_argument("--forces-key", default="", help="true forces property (default: none for HDF5; "
                                                         "'forces' / 'F' where present)")
    parser.add_argument("--forces-sign", type=float, default=1.0, choices=(1.0, -1.0),
                        help="-1 if the file stores gradients (+dE/dR) under the forces key (default +1)")
    parser.add_argument("--ensemble", action="store_true",
                        help="the models are the members of one ensemble: report each and their mean")
    parser.add_argument("--out", type=Path, default=Path("evaluation"), help="output folder (default evaluation/)")
    parser.add_argument("--batch-size", type=int, default=64, help="conformations per model call (default 64)")
    parser.add_argument("--max-conformations", type=int, default=0,
                        help="evaluate a random subset of this many conformations (default 0: all)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default 0: torch's default)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    spec = DataSpec(path=str(args.data), format=args.format, energy_key=args.energy_key,
                    forces_key=args.forces_key, energy_unit=args.energy_unit, length_unit=args.length_unit,
                    forces_sign=args.forces_sign)
    request = EvaluationRequest(models=list(args.models), data=spec, out=args.out, batch_size=args.batch_size,
                                ensemble=args.ensemble, max_conformations=args.max_conformations)
    try:
        report = run_evaluation(request)
    except EkdError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(markdown_report(report))
    failed = [m["error"] for m in report["models"].values() if not m["ok"]]
    for message in failed:
        print(f"error: {message}", file=sys.stderr)
    print(f"wrote {args.out / 'report.md'}, report.json and plots")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
