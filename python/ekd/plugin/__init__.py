"""The LAMMPS plugin ``ekdplugin.so`` (``pair_style ekd``) seen from Python: where it is, building
it, loading it (``manage.py``); command line in ``__main__.py``."""

from .manage import PLUGIN_NAME, PluginError, build, check, lammps, load_mpi, mpi_library, plugin_directory, plugin_path

__all__ = ["PLUGIN_NAME", "PluginError", "build", "check", "lammps", "load_mpi", "mpi_library", "plugin_directory",
           "plugin_path"]
