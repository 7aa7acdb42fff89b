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
