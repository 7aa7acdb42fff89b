"""Exceptions users see. Each message names the file, key, index or atom at fault."""


class EkdError(Exception):
    """Base class of every error ekd raises on purpose (bad input, bad config)."""


class DataError(EkdError):
    """A data file is missing, unreadable or holds values ekd cannot use."""


class ConfigError(EkdError):
    """A run configuration has an unknown, conflicting or invalid key."""


class ModelFileError(EkdError):
    """A checkpoint or exported model cannot be used."""


class LammpsError(EkdError):
    """LAMMPS is missing or a LAMMPS run failed; the message carries LAMMPS's own ERROR line."""


class WriteError(EkdError):
    """A result file could not be written (disk full, file-size limit, no permission); the message
    names the file and what was kept (the previous version of the file, or nothing)."""


class NonFiniteOutput(EkdError):
    """A model gave non-finite energies or forces: damaged weights, or a structure far outside
    its training data (MD that blew up). Stability runs count it as a failed trajectory."""
