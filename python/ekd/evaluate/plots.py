"""Parity plots (PNG): predicted against reference energies and force components."""

from __future__ import annotations

from pathlib import Path
from typing import Dict, Optional

import numpy as np

from ..data import AtomsData
from ..training import Predictions


def axes_grid(n: int):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = min(n, 4)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(3.4 * cols, 3.3 * rows), squeeze=False)
    return plt, fig, axes.ravel()


def parity_panel(ax, reference: np.ndarray, predicted: np.ndarray, title: str, unit: str) -> None:
    mask = np.isfinite(reference)
    reference, predicted = reference[mask], predicted[mask]
    rmse = float(np.sqrt(np.mean((predicted - reference) ** 2))) if reference.size else float("nan")
    ax.scatter(reference, predicted, s=3, alpha=0.5, linewidths=0)
    if reference.size:
        lo, hi = float(min(reference.min(), predicted.min())), float(max(reference.max(), predicted.max()))
        ax.plot([lo, hi], [lo, hi], color="k", lw=0.8)
    ax.set_title(f"{title}\nRMSE {rmse:.4g} {unit}", fontsize=9)
    ax.set_xlabel(f"reference ({unit})", fontsize=8)
    ax.set_ylabel(f"predicted ({unit})", fontsize=8)
    ax.tick_params(labelsize=7)


def parity_plots(predictions: Dict[str, Predictions], data: AtomsData, out_dir: Path,
                 split_name: str) -> Dict[str, Optional[Path]]:
    """`energy_parity_<split>.png` (energy relative to each molecule's mean reference energy)
    and, if the data have true forces there, `force_parity_<split>.png`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    names = list(predictions)
    paths: Dict[str, Optional[Path]] = {"energy": None, "forces": None}
    if not names:
        return paths
    ids = predictions[names[0]].ids
    sub = data.subset(ids)
    # Energies relative to the mean of each molecule, so molecules of different size share one scale.
    offset = np.zeros(len(sub))
    for g in np.unique(sub.group):
        offset[sub.group == g] = sub.energy[sub.group == g].mean()
    plt, fig, axes = axes_grid(len(names))
    for ax, name in zip(axes, names):
        parity_panel(ax, sub.energy - offset, predictions[name].energy - offset, name, "eV")
    for ax in axes[len(names):]:
        ax.axis("off")
    fig.suptitle(f"energies, {split_name} split (relative to each molecule's mean)", fontsize=10)
    fig.tight_layout()
    paths["energy"] = out_dir / f"energy_parity_{split_name}.png"
    fig.savefig(paths["energy"], dpi=110)
    plt.close(fig)
    if sub.forces is not None and sub.has_forces.any():
        with_forces = [n for n in names if predictions[n].forces is not None]
        plt, fig, axes = axes_grid(len(with_forces))
        for ax, name in zip(axes, with_forces):
            parity_panel(ax, sub.forces.ravel(), predictions[name].forces.ravel(), name, "eV/Å")
        for ax in axes[len(with_forces):]:
            ax.axis("off")
        fig.suptitle(f"force components, {split_name} split", fontsize=10)
        fig.tight_layout()
        paths["forces"] = out_dir / f"force_parity_{split_name}.png"
        fig.savefig(paths["forces"], dpi=110)
        plt.close(fig)
    return paths
