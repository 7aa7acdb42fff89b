"""`python -m ekd.train [CONFIG.toml] [--out DIR] [--stage STAGE] [--resume]`: the EKD method.

Teachers learn the reference energies only, label every conformation with forces and atomic
energies, and a student learns the energies plus the teachers' mean forces; a baseline of the
student's architecture learns the energies alone; the summary compares every model. The method,
read top-down: ekd/train/method.py.

Without CONFIG the whole method runs on the embedded CCSD(T) data set with the demo settings
of `ekd/configs/default.toml`. Under `torchrun --nproc_per_node K -m ekd.train ...` it runs on
K processes (docs/distributed.md).

Exit codes: 0 done; 2 bad input or configuration (the message names the file or key), or a
result file that could not be written (disk full: the message names the file; the last complete
checkpoint and labels are kept, continue with --resume); 130 interrupted (continue with --resume).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Optional, Sequence

from ..config import DEFAULT_CONFIG, config_to_toml, load_config
from ..errors import EkdError, WriteError
from ..fileio import NO_ROOM
from ..training.distributed import Context, from_environment
from .method import STAGES, adopt_teachers, on_main, run_stages


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m ekd.train", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", nargs="?", type=Path, default=None,
                        help=f"run configuration (TOML); default: the demo run {DEFAULT_CONFIG.name} "
                             "on the embedded CCSD(T) data")
    parser.add_argument("--out", type=Path, default=Path("runs/default"),
                        help="run directory (default: runs/default)")
    parser.add_argument("--stage", choices=STAGES, default="all",
                        help="teachers | label | augment (conformations beyond the data, when [augment] asks) | "
                             "student (student and baseline) | summary | all (default)")
    parser.add_argument("--resume", action="store_true",
                        help="continue an interrupted run from its last checkpoint / labels batch")
    parser.add_argument("--teachers-from", type=Path, default=None, metavar="RUN_DIR",
                        help="reuse the trained teachers and labels of another run with the same data, split, "
                             "references and teachers settings (to try other students)")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    parser.add_argument("--quiet", action="store_true", help="no progress bars or progress lines")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    dist: Optional[Context] = None
    try:
        config = load_config(args.config)
        dist = from_environment(config.run.device)  # None unless torchrun started several processes
        first = dist is None or dist.is_main
        if args.print_config:
            if first:
                print(config_to_toml(config))
        else:
            if config.description and first:
                print(config.description.strip(), flush=True)
            if args.teachers_from is not None:
                on_main(dist, lambda: adopt_teachers(args.teachers_from, config, args.out))
            run_stages(config, args.out, args.stage, args.resume, progress=not args.quiet, dist=dist)
    except BaseException as err:
        if dist is not None:  # name the rank at fault, tell the others, and leave without waiting for them
            code = dist.report(err)
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
        if isinstance(err, EkdError) or no_room(err):
            if int(os.environ.get("RANK", "0")) == 0:  # under torchrun, before the ranks connected: say it once
                print(f"error: {message(err)}", file=sys.stderr)
            return 2
        if isinstance(err, KeyboardInterrupt):
            print("\ninterrupted; continue with --resume", file=sys.stderr)
            return 130
        raise
    if dist is not None:
        dist.close()
    return 0


def no_room(err: BaseException) -> bool:
    """A write that found the disk full outside ekd's own writers (which raise WriteError), e.g. a plot."""
    return isinstance(err, OSError) and err.errno in NO_ROOM


def message(err: BaseException) -> str:
    """The one line that explains `err` (an EkdError, or a write with no room)."""
    if isinstance(err, WriteError):
        return f"{err}. Free some space, then continue with --resume"
    if isinstance(err, OSError):
        return (f"could not write {err.filename or 'a file'}: {err.strerror} (disk full or file-size limit?); "
                "checkpoints and labels are kept. Free some space, then continue with --resume")
    return str(err)


if __name__ == "__main__":
    sys.exit(main())
