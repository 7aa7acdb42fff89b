"""Units. Internally ekd uses **eV for energies and Ångström for lengths** (forces in eV/Å).

Every reader declares the units of its source and converts on reading; nothing downstream
converts again.
"""

from __future__ import annotations

from ..errors import DataError

HARTREE_EV = 27.211386245988
KCAL_MOL_EV = 1.0 / 23.060547830619  # 1 kcal/mol in eV
KJ_MOL_EV = 1.0 / 96.48533212331
BOHR_ANGSTROM = 0.529177210903

ENERGY_UNITS: dict[str, float] = {
    "eV": 1.0,
    "Hartree": HARTREE_EV,
    "Ha": HARTREE_EV,
    "kcal/mol": KCAL_MOL_EV,
    "kJ/mol": KJ_MOL_EV,
    "meV": 1e-3,
}
LENGTH_UNITS: dict[str, float] = {"Angstrom": 1.0, "A": 1.0, "Bohr": BOHR_ANGSTROM, "nm": 10.0}

EV_PER_KCAL_MOL_INV = 23.060547830619  # LAMMPS `units real` energies are kcal/mol


def energy_factor(unit: str, where: str = "") -> float:
    """Factor that converts an energy in `unit` to eV."""
    if unit not in ENERGY_UNITS:
        raise DataError(f"{where}unknown energy unit {unit!r}; known: {', '.join(ENERGY_UNITS)}")
    return ENERGY_UNITS[unit]


def length_factor(unit: str, where: str = "") -> float:
    """Factor that converts a length in `unit` to Å."""
    if unit not in LENGTH_UNITS:
        raise DataError(f"{where}unknown length unit {unit!r}; known: {', '.join(LENGTH_UNITS)}")
    return LENGTH_UNITS[unit]
