"""Run plots (matplotlib Agg: training runs on headless machines): curves and prediction traces."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> None:
    """Write under a temporary name then rename: a viewer never opens a half-written PNG."""
    from pipeline.engine.atomic import atomic_path

    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")


def plot_curves(history: list[dict[str, Any]], path: Path) -> Path:
    """Training loss and validation CCC (valence, arousal, mean) per epoch; the best epoch marked."""
    plt = _pyplot()
    epochs = [h["epoch"] for h in history]

    def col(name: str) -> list[float]:
        return [np.nan if h.get(name) is None else float(h[name]) for h in history]

    from matplotlib.ticker import MaxNLocator

    fig, (ax_loss, ax_ccc) = plt.subplots(1, 2, figsize=(10, 3.5))
    for ax in (ax_loss, ax_ccc):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax_loss.plot(epochs, col("loss"), marker="o", label="train loss (1 - CCC)")
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("loss")
    ax_loss.grid(alpha=0.3)
    ax_loss.legend()
    for name, style in (("ccc_v", "-"), ("ccc_a", "-"), ("mean", "--")):
        ax_ccc.plot(epochs, col(name), style, marker="o", label=f"val {name}")
    best = [h["epoch"] for h in history if h.get("best")]
    if best:
        ax_ccc.axvline(best[-1], color="grey", alpha=0.5, label=f"best (epoch {best[-1]})")
    ax_ccc.set_xlabel("epoch")
    ax_ccc.set_ylabel("CCC")
    ax_ccc.grid(alpha=0.3)
    ax_ccc.legend()
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)
    return path


def plot_prediction(trial: str, pred: np.ndarray, labels: np.ndarray | None, mask: np.ndarray | None,
                    path: Path) -> Path:
    """Valence and arousal over the trial's frames: prediction against label (gaps where unlabelled)."""
    plt = _pyplot()
    frames = np.arange(pred.shape[0])
    fig, axes = plt.subplots(2, 1, figsize=(10, 4.5), sharex=True)
    for d, (ax, name) in enumerate(zip(axes, ("valence", "arousal"))):
        if labels is not None:
            lab = labels[:, d].astype(np.float64).copy()
            if mask is not None:
                lab[~mask] = np.nan
            ax.plot(frames, lab, color="black", lw=1, label="label")
        ax.plot(frames, pred[:, d], color="tab:red", lw=1, label="prediction")
        ax.set_ylim(-1.05, 1.05)
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
    axes[0].set_title(trial)
    axes[0].legend(loc="upper right")
    axes[1].set_xlabel("frame")
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)
    return path
