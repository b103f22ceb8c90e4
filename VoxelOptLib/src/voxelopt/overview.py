"""A PNG overview of a registration: mid slices of fixed, moving, warped, entropy and Jacobian."""

from __future__ import annotations

from pathlib import Path

import SimpleITK as sitk

from .geometry import Grid, resample_image, window_hu
from .io import PathLike


def save_overview(path: PathLike, fixed: sitk.Image, moving: sitk.Image, result, window=(-200.0, 300.0)) -> Path:
    """Write a PNG with axial (top) and coronal (bottom) mid slices of the five images.

    The moving image is shown resampled on the fixed grid without the deformation (identity),
    so the rows compare like with like. Intensities are shown with ``window`` (HU).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    grid = Grid.from_image(fixed)
    moving_on_fixed = resample_image(moving, grid, default=float(sitk.GetArrayViewFromImage(moving).min()))
    panels = [
        ("fixed", window_hu(sitk.GetArrayFromImage(fixed), window), "gray", (0.0, 1.0)),
        ("moving (unregistered)", window_hu(sitk.GetArrayFromImage(moving_on_fixed), window), "gray", (0.0, 1.0)),
        ("warped moving", window_hu(sitk.GetArrayFromImage(result.warped), window), "gray", (0.0, 1.0)),
        ("entropy (nats)", sitk.GetArrayFromImage(result.entropy), "inferno", None),
        ("Jacobian determinant", sitk.GetArrayFromImage(result.jacobian), "RdBu_r", (0.0, 2.0)),
    ]
    aspect_coronal = grid.spacing[2] / grid.spacing[0]
    fig, axes = plt.subplots(2, len(panels), figsize=(3.0 * len(panels), 5.6), layout="constrained")
    for column, (title, volume, cmap, limits) in enumerate(panels):
        z, y = volume.shape[0] // 2, volume.shape[1] // 2
        vmin, vmax = limits if limits is not None else (float(volume.min()), float(volume.max()))
        for row, (plane, aspect) in enumerate(((volume[z], 1.0), (volume[:, y, :][::-1], aspect_coronal))):
            image = axes[row, column].imshow(plane, cmap=cmap, vmin=vmin, vmax=vmax, aspect=aspect)
            axes[row, column].set_axis_off()
        axes[0, column].set_title(title, fontsize=10)
        if limits is None or cmap != "gray":
            fig.colorbar(image, ax=axes[:, column], fraction=0.046, pad=0.02)
    metrics = result.metrics
    caption = f"SDlogJ {metrics['sdlogj']:.3f}   folding {metrics['folding_percent']:.3f}%   time {result.timings['total']:.2f} s"
    if "dice_mean" in metrics:
        caption = f"Dice {metrics['dice_initial_mean']:.3f} -> {metrics['dice_mean']:.3f}   " + caption
    fig.suptitle(caption)
    path = Path(path)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path
