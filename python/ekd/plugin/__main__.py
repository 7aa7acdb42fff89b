"""``python -m ekd.plugin build|path|check``: build the LAMMPS plugin, print its path, check that
``lmp`` sees ``pair_style ekd``.

Exit codes: 0 done (path: the plugin exists; check: it is registered); 1 otherwise.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .manage import PluginError, build, check, plugin_path


def main(argv: list[str] | None = None) -> int:
    """``python -m ekd.plugin build|path|check``."""
    parser = argparse.ArgumentParser(prog="python -m ekd.plugin", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p_build = sub.add_parser("build", help="compile ekdplugin.so and libekdops.so and install them into python/ekd/lib/")
    p_build.add_argument("-v", "--verbose", action="store_true", help="show the cmake and compiler output")
    p_build.add_argument("--cuda", choices=["auto", "on", "off"], default="auto",
                         help="compile the CUDA code paths (auto: when torch is a CUDA build)")
    p_build.add_argument("--prefix", type=Path, default=None, metavar="DIR",
                         help="install into DIR (build tree DIR/build) instead of python/ekd/lib/, e.g. a "
                              "second build against another libtorch")
    sub.add_parser("path", help="print the path of ekdplugin.so")
    sub.add_parser("check", help="run lmp and confirm that pair_style ekd is registered")
    args = parser.parse_args(argv)
    try:
        if args.command == "build":
            build(verbose=args.verbose, cuda={"auto": None, "on": True, "off": False}[args.cuda], prefix=args.prefix)
        elif args.command == "path":
            print(plugin_path())
            return 0 if plugin_path().is_file() else 1
        elif args.command == "check":
            return 0 if check() else 1
    except PluginError as err:
        print(f"ekd.plugin: error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
