"""Pure drawing functions shared by the visualisation callback, predict and the notebook."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402


def to_numpy_image(image: torch.Tensor) -> np.ndarray:
    """``(3, H, W)`` or ``(1, H, W)`` tensor in ``[0, 1]`` -> ``(H, W, 3)`` float array."""
    arr = image.detach().float().clamp(0, 1).cpu()
    if arr.shape[0] == 1:
        arr = arr.expand(3, -1, -1)
    return arr.permute(1, 2, 0).numpy()


def heatmap_overlay(
    image: torch.Tensor, anomaly_map: torch.Tensor, vmin: float, vmax: float, alpha: float = 0.5
) -> np.ndarray:
    """Blend a jet-coloured map onto the image.

    Args:
        image: ``(3, H, W)`` in ``[0, 1]``.
        anomaly_map: ``(1, H, W)`` or ``(H, W)`` raw scores.
        vmin: score drawn as the coldest colour. vmax: score drawn as the hottest.
        alpha: weight of the heat map.

    Returns:
        ``(H, W, 3)`` float array in ``[0, 1]``.
    """
    amap = anomaly_map.detach().float().cpu().reshape(image.shape[-2:]).numpy()
    span = max(vmax - vmin, 1e-12)
    colours = plt.get_cmap("jet")(np.clip((amap - vmin) / span, 0, 1))[..., :3]
    return (1 - alpha) * to_numpy_image(image) + alpha * colours


def sample_figure(
    image: torch.Tensor,
    anomaly_map: torch.Tensor,
    vmin: float,
    vmax: float,
    gt_mask: torch.Tensor | None = None,
    pred_mask: torch.Tensor | None = None,
    reconstruction: torch.Tensor | None = None,
    title: str = "",
) -> Figure:
    """One row of panels: input, reconstruction, heat-map overlay, ground truth, predicted mask.

    Panels whose tensor is ``None`` are left out. Tensors are ``(C, H, W)``.
    """
    panels = [("input", to_numpy_image(image))]
    if reconstruction is not None:
        panels.append(("reconstruction", to_numpy_image(reconstruction)))
    panels.append(("anomaly map", heatmap_overlay(image, anomaly_map, vmin, vmax)))
    if gt_mask is not None:
        panels.append(("ground truth", to_numpy_image(gt_mask)))
    if pred_mask is not None:
        panels.append(("predicted mask", to_numpy_image(pred_mask.float())))
    fig, axes = plt.subplots(1, len(panels), figsize=(2.6 * len(panels), 3.0))
    for ax, (name, arr) in zip(np.atleast_1d(axes), panels, strict=True):
        ax.imshow(arr)
        ax.set_title(name, fontsize=9)
        ax.axis("off")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


def figure_to_array(fig: Figure) -> np.ndarray:
    """Render a figure to an ``(H, W, 3)`` uint8 array."""
    fig.canvas.draw()
    return np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()


def save_figure(fig: Figure, path: Path) -> None:
    """Save ``fig`` as PNG at ``path`` (parents created) and close it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)


def curve_figure(
    curves: dict[str, tuple[np.ndarray, np.ndarray]],
    xlabel: str,
    ylabel: str,
    title: str = "",
    diagonal: bool = False,
) -> Figure:
    """Line plot of named curves on the unit square (ROC or precision-recall).

    Args:
        curves: legend label -> ``(x, y)`` 1-D arrays; empty curves are left out.
        xlabel: x-axis label. ylabel: y-axis label.
        title: figure title.
        diagonal: draw the chance diagonal (ROC).
    """
    fig, ax = plt.subplots(figsize=(3.6, 3.4))
    for label, (x, y) in curves.items():
        if len(x):
            ax.plot(x, y, label=label, linewidth=1.5)
    if diagonal:
        ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
    ax.set(xlim=(0, 1), ylim=(0, 1.02), xlabel=xlabel, ylabel=ylabel)
    ax.set_title(title, fontsize=8)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right" if diagonal else "lower left")
    fig.tight_layout()
    return fig
