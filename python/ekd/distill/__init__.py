"""Distillation: the teacher ensemble labels every conformation (forces, atomic energies)."""

from .labels import Labels, data_fingerprint, read_labels, write_labels

__all__ = ["Labels", "data_fingerprint", "read_labels", "write_labels"]
