"""A PNG picture for checking a registration by eye (matplotlib, Agg backend; no display needed).

One row per image (fixed, moving before registration, moving after registration, a checkerboard
of the two, their difference, the registered organ outlines on the fixed image, and optionally the
local volume change and the uncertainty), one column per view: axial, coronal and sagittal slices
through the middle of the fixed grid.

Display orientation is radiological: axial slices are seen from the feet (patient right on the
screen's left, anterior at the top), coronal slices from the front (right on the left, superior
at the top), sagittal slices from the patient's left (anterior on the left, superior at the top).
Each image axis is flipped or swapped to come as close to that as the grid allows, and the edge
letters (R/L, A/P, S/I) are computed from the direction matrix, so an oblique or flipped image is
labelled with where its edges really point (two letters when an edge is oblique by > 15 degrees).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import numpy as np
import SimpleITK as sitk

from .errors import InputError
from .geometry import Grid, resample_image
from .io import PathLike
from . import voxels

#: Screen right and screen down as LPS unit vectors, per view (radiological convention).
_SCREEN = {
    "axial": ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0)),  # right of screen = patient left, down = posterior
    "coronal": ((1.0, 0.0, 0.0), (0.0, 0.0, -1.0)),  # down = inferior
    "sagittal": ((0.0, 1.0, 0.0), (0.0, 0.0, -1.0)),  # right of screen = posterior
}
VIEWS = tuple(_SCREEN)
_VIEW_TITLES = {"axial": "Axial (seen from the feet)", "coronal": "Coronal (seen from the front)",
                "sagittal": "Sagittal (seen from the left)"}
_LETTERS = (("R", "L"), ("A", "P"), ("I", "S"))  # (negative, positive) LPS direction of each axis
_OBLIQUE = np.sin(np.deg2rad(15.0))


@dataclasses.dataclass(frozen=True)
class SliceLayout:
    """How one view is cut from a (z, y, x) array and which way its screen edges point.

    Attributes:
        slice_axis: array axis (0 = z, 1 = y, 2 = x) across which the slice is taken.
        row_axis, col_axis: array axes shown down the screen and across it.
        row_flip, col_flip: whether that axis is reversed on screen.
        letters: patient directions at the screen's (left, right, top, bottom) edges, e.g. "R".
    """

    slice_axis: int
    row_axis: int
    row_flip: bool
    col_axis: int
    col_flip: bool
    letters: Tuple[str, str, str, str]

    def plane(self, volume: np.ndarray, index: Optional[int] = None) -> np.ndarray:
        """The 2-D slice of ``volume`` (z, y, x) at ``index`` (default: the middle), in screen order."""
        if index is None:
            index = volume.shape[self.slice_axis] // 2
        plane = np.take(volume, index, axis=self.slice_axis)
        remaining = [a for a in range(3) if a != self.slice_axis]
        if remaining.index(self.row_axis) == 1:
            plane = plane.T
        return plane[::-1 if self.row_flip else 1, ::-1 if self.col_flip else 1]


def direction_letters(vector: Sequence[float]) -> str:
    """Patient-direction letters of an LPS vector: the dominant one first, then any > 15 degrees."""
    vector = np.asarray(vector, dtype=float)
    order = np.argsort(-np.abs(vector))
    return "".join(_LETTERS[a][int(vector[a] > 0)] for i, a in enumerate(order)
                   if i == 0 or abs(vector[a]) / np.linalg.norm(vector) > _OBLIQUE)


def slice_layout(direction: Sequence[float], view: str) -> SliceLayout:
    """The layout of ``view`` (axial / coronal / sagittal) for an image with ``direction``.

    ``direction`` is the row-major 3x3 direction matrix of the image (columns: the LPS directions
    of the i, j, k index axes, i.e. of array axes x, y, z).
    """
    if view not in _SCREEN:
        raise InputError(f"unknown view {view!r}; choose one of {', '.join(VIEWS)}")
    axes = np.asarray(direction, dtype=float).reshape(3, 3)  # column a = index axis a
    right, down = (np.asarray(v) for v in _SCREEN[view])
    col = int(np.argmax(np.abs(axes.T @ right)))
    row = max((a for a in range(3) if a != col), key=lambda a: abs(axes[:, a] @ down))
    col_flip, row_flip = bool(axes[:, col] @ right < 0), bool(axes[:, row] @ down < 0)
    screen_right = axes[:, col] * (-1 if col_flip else 1)
    screen_down = axes[:, row] * (-1 if row_flip else 1)
    letters = (direction_letters(-screen_right), direction_letters(screen_right),
               direction_letters(-screen_down), direction_letters(screen_down))
    index_slice = 3 - col - row
    return SliceLayout(2 - index_slice, 2 - row, row_flip, 2 - col, col_flip, letters)


@dataclasses.dataclass
class _Row:
    title: str
    volume: np.ndarray
    cmap: str
    limits: Tuple[float, float]
    colorbar: Optional[str] = None  # colorbar label, if any
    outlines: List[Tuple[np.ndarray, Optional[str]]] = dataclasses.field(default_factory=list)  # (labels, colour)


def save_overview(
    path: PathLike,
    fixed: sitk.Image,
    moving: sitk.Image,
    warped: sitk.Image,
    fixed_labels: Optional[sitk.Image] = None,
    warped_labels: Optional[sitk.Image] = None,
    jacobian: Optional[sitk.Image] = None,
    entropy: Optional[sitk.Image] = None,
    window: Tuple[float, float] = (-200.0, 300.0),
    note: Optional[str] = None,
) -> Path:
    """Write the overview PNG and return its path.

    Args:
        fixed: the fixed CT (HU); the picture shows its grid. Every other image may be on any grid
            (usually the fixed grid, or a coarser grid of the same box for the maps) and is
            resampled onto it as it lies in physical space.
        moving: the moving CT, shown without any alignment ("before").
        warped: the moving CT after registration.
        fixed_labels, warped_labels: organ label maps (fixed, and moving after registration);
            their outlines are drawn on the fixed CT.
        jacobian: local volume change of the registration (determinant of the Jacobian, 1 = none).
        entropy: uncertainty of the match (displacement entropy, nats).
        window: HU range shown from black to white.
        note: a line under the title (e.g. organ overlap before/after, run time).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    grid = Grid.from_image(fixed)
    low, high = (float(v) for v in window)
    gray = voxels.copy(fixed).astype(np.float32)
    before = _on_grid(moving, grid, sitk.sitkLinear, float(voxels.view(moving).min()))
    after = _on_grid(warped, grid, sitk.sitkLinear, low).astype(np.float32)
    rows = [
        _Row("Fixed", gray, "gray", (low, high)),
        _Row("Moving (before)", before, "gray", (low, high)),
        _Row("Moving after registration", after, "gray", (low, high)),
        _Row("Checkerboard:\nfixed / registered", _checkerboard(gray, after), "gray", (low, high)),
        _Row("Difference:\nregistered - fixed", np.clip(after, low, high) - np.clip(gray, low, high), "RdBu_r",
             (-(high - low) / 2, (high - low) / 2), "HU"),
    ]
    if warped_labels is not None or fixed_labels is not None:
        outlines = [(_on_grid(labels, grid, sitk.sitkNearestNeighbor, 0), colour) for labels, colour in
                    ((fixed_labels, "white"), (warped_labels, None)) if labels is not None]
        what = " and ".join(name for labels, name in ((fixed_labels, "fixed (white)"), (warped_labels, "registered (colour)"))
                            if labels is not None)
        rows.append(_Row(f"Organ outlines on fixed:\n{what}", gray, "gray", (low, high), outlines=outlines))
    if jacobian is not None:
        rows.append(_Row("Local volume change\n(1 = none, < 1 shrink)", _on_grid(jacobian, grid, sitk.sitkLinear, 1.0), "RdBu_r",
                         (0.0, 2.0), "ratio"))
    if entropy is not None:
        values = _on_grid(entropy, grid, sitk.sitkLinear, 0.0)
        rows.append(_Row("Uncertainty of the match\n(high = unsure)", values, "inferno",
                         (float(values.min()), float(values.max())), "nats"))

    layouts = [slice_layout(grid.direction, view) for view in VIEWS]
    spacing_zyx = grid.spacing[::-1]
    fig, axes = plt.subplots(len(rows), len(VIEWS), figsize=(3.2 * len(VIEWS) + 1.6, 2.7 * len(rows)),
                             layout="constrained", squeeze=False)
    for r, row in enumerate(rows):
        for c, layout in enumerate(layouts):
            ax = axes[r, c]
            aspect = spacing_zyx[layout.row_axis] / spacing_zyx[layout.col_axis]
            shown = ax.imshow(layout.plane(row.volume), cmap=row.cmap, vmin=row.limits[0], vmax=row.limits[1],
                              aspect=aspect, interpolation="nearest")
            for labels, colour in row.outlines:
                _draw_outlines(ax, layout.plane(labels), colour, aspect)
            _edge_letters(ax, layout.letters)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(_VIEW_TITLES[VIEWS[c]], fontsize=10)
            if c == 0:
                ax.set_ylabel(row.title, fontsize=10)
        if row.colorbar:
            fig.colorbar(shown, ax=axes[r, :], fraction=0.03, pad=0.01, label=row.colorbar)
    fig.suptitle("How well the moving scan matches the fixed scan" + (f"\n{note}" if note else ""), fontsize=12)
    path = Path(path)
    fig.savefig(path, dpi=72)
    plt.close(fig)
    return path


def _on_grid(image: sitk.Image, grid: Grid, interpolator: int, default: float) -> np.ndarray:
    """The (z, y, x) array of ``image`` resampled onto ``grid`` (identity; itself when already there)."""
    return voxels.copy(resample_image(image, grid, interpolator=interpolator, default=default))


def result_note(result) -> str:
    """A one-line summary of a :class:`~voxelopt.result.RegistrationResult` in plain words, for ``note``."""
    metrics = result.metrics
    parts = []
    if "dice_mean" in metrics:
        parts.append(f"organ overlap (Dice) {metrics['dice_initial_mean']:.2f} before, {metrics['dice_mean']:.2f} after")
    parts.append(f"folded voxels {metrics['folding_percent']:.2f} %")
    parts.append(f"time {result.timings['total']:.1f} s")
    return ";  ".join(parts)


def _checkerboard(first: np.ndarray, second: np.ndarray, squares: int = 8) -> np.ndarray:
    """Alternate 3-D blocks of ``first`` and ``second`` (``squares`` blocks along each axis)."""
    blocks = [np.arange(n) * squares // n for n in first.shape]
    parity = (blocks[0][:, None, None] + blocks[1][None, :, None] + blocks[2][None, None, :]) % 2
    return np.where(parity == 0, first, second)


def _draw_outlines(ax, labels: np.ndarray, colour: Optional[str], aspect: float) -> None:
    """Draw the outline of every label of a 2-D label slice, in ``colour`` or (None) one colour per label."""
    from matplotlib.colors import ListedColormap

    contour = np.ma.masked_equal(voxels.copy(sitk.LabelContour(sitk.GetImageFromArray(labels.astype(np.int32)))), 0)
    if colour is None:
        ax.imshow(contour % 10, cmap="tab10", vmin=0, vmax=9, aspect=aspect, interpolation="nearest")
    else:
        ax.imshow(contour, cmap=ListedColormap([colour]), aspect=aspect, interpolation="nearest")


def _edge_letters(ax, letters: Tuple[str, str, str, str]) -> None:
    """Patient-direction letters at the left, right, top and bottom edges of a panel."""
    from matplotlib import patheffects

    style = dict(transform=ax.transAxes, color="yellow", fontsize=8, fontweight="bold",
                 path_effects=[patheffects.withStroke(linewidth=2, foreground="black")])
    left, right, top, bottom = letters
    ax.text(0.02, 0.5, left, ha="left", va="center", **style)
    ax.text(0.98, 0.5, right, ha="right", va="center", **style)
    ax.text(0.5, 0.98, top, ha="center", va="top", **style)
    ax.text(0.5, 0.02, bottom, ha="center", va="bottom", **style)
