"""Registration quality metrics: Dice, HD95, Jacobian determinant, SDlogJ, folding.

Conventions:
* Dice and HD95 are computed for the labels present in *both* label maps (Learn2Reg's rule);
  label 0 is background and never scored.
* HD95 is the 95th percentile of the symmetric surface distances, in millimetres, using the
  grid's physical spacing.
* The Jacobian determinant is that of ``x -> x + d(x)`` (the resampling map of the field) with
  central differences in voxel units of the fixed grid (one-sided at the borders); it is
  invariant to the voxel/mm choice because it is a ratio of volumes.
* ``sdlogj`` follows the Learn2Reg evaluation that the paper's tables use: the standard
  deviation of ``log(clip(J + 3, 1e-9, 1e9))`` over the volume cropped by 2 voxels per side.
  ``sdlogj_plain`` is the standard deviation of ``log J`` over the same voxels where ``J > 0``.
* ``folding_percent`` is 100 * (number of voxels with J <= 0) / (all voxels).
"""

from __future__ import annotations

from typing import Dict, Optional, Sequence

import numpy as np
import torch
from scipy import ndimage


def jacobian_determinant(u: torch.Tensor) -> torch.Tensor:
    """det(I + grad u) of a voxel field (1, 3, Z, Y, X) with channels along array axes -> (Z, Y, X)."""
    field = u[0]
    grads = [torch.gradient(field[c], dim=(0, 1, 2)) for c in range(3)]  # grads[c][a] = du_c/dp_a
    j = [[grads[r][c] + (1.0 if r == c else 0.0) for c in range(3)] for r in range(3)]
    return (
        j[0][0] * (j[1][1] * j[2][2] - j[1][2] * j[2][1])
        - j[0][1] * (j[1][0] * j[2][2] - j[1][2] * j[2][0])
        + j[0][2] * (j[1][0] * j[2][1] - j[1][1] * j[2][0])
    )


def jacobian_statistics(jac: np.ndarray, crop: int = 2) -> Dict[str, float]:
    """SDlogJ (Learn2Reg convention and plain), folding percentage, min and max of J."""
    jac = np.asarray(jac, dtype=np.float64)
    inner = jac
    if all(n > 2 * crop for n in jac.shape):
        inner = jac[crop:-crop, crop:-crop, crop:-crop]
    positive = inner[inner > 0]
    return {
        "sdlogj": float(np.log(np.clip(inner + 3.0, 1e-9, 1e9)).std()),
        "sdlogj_plain": float(np.log(positive).std()) if positive.size else float("nan"),
        "folding_percent": float(100.0 * np.count_nonzero(jac <= 0) / jac.size),
        "jacobian_min": float(jac.min()),
        "jacobian_max": float(jac.max()),
    }


def dice_scores(a: np.ndarray, b: np.ndarray, labels: Optional[Sequence[int]] = None) -> Dict[int, float]:
    """Dice of each label present in both maps (or of ``labels``)."""
    if labels is None:
        labels = common_labels(a, b)
    out = {}
    for label in labels:
        x, y = a == label, b == label
        denominator = x.sum() + y.sum()
        out[int(label)] = float(2.0 * np.logical_and(x, y).sum() / denominator) if denominator else float("nan")
    return out


def common_labels(a: np.ndarray, b: np.ndarray) -> list:
    """Non-zero labels present in both maps, sorted."""
    return sorted(int(v) for v in np.intersect1d(np.unique(a), np.unique(b)) if v != 0)


def _surface(mask: np.ndarray) -> np.ndarray:
    return mask & ~ndimage.binary_erosion(mask, structure=ndimage.generate_binary_structure(3, 1), border_value=0)


def _bounding_box(mask: np.ndarray, margin: int) -> tuple:
    """Slices of the smallest box holding every True voxel of a non-empty mask, plus a margin."""
    window = []
    for axis in range(mask.ndim):
        hits = np.flatnonzero(mask.any(axis=tuple(a for a in range(mask.ndim) if a != axis)))
        window.append(slice(max(int(hits[0]) - margin, 0), int(hits[-1]) + 1 + margin))
    return tuple(window)


def hd95(a: np.ndarray, b: np.ndarray, spacing_zyx: Sequence[float]) -> float:
    """95th-percentile symmetric surface distance (mm) between two binary masks.

    ``spacing_zyx`` is the voxel size along the array axes (z, y, x). Returns NaN when a mask is
    empty. Work is confined to the bounding box of both masks plus a one-voxel margin.
    """
    if not a.any() or not b.any():
        return float("nan")
    window = _bounding_box(a | b, margin=1)
    surface_a, surface_b = _surface(a[window]), _surface(b[window])
    dist_to_b = ndimage.distance_transform_edt(~surface_b, sampling=spacing_zyx)
    dist_to_a = ndimage.distance_transform_edt(~surface_a, sampling=spacing_zyx)
    distances = np.concatenate([dist_to_b[surface_a], dist_to_a[surface_b]])
    return float(np.percentile(distances, 95))


def label_metrics(fixed: np.ndarray, warped: np.ndarray, spacing_zyx: Sequence[float],
                  labels: Optional[Sequence[int]] = None) -> Dict[str, object]:
    """Dice per label and mean, HD95 per label and mean (mm), for labels present in both maps."""
    if labels is None:
        labels = common_labels(fixed, warped)
    dice = dice_scores(fixed, warped, labels)
    distances = {label: hd95(fixed == label, warped == label, spacing_zyx) for label in labels}
    valid_hd = [v for v in distances.values() if np.isfinite(v)]
    return {
        "labels": [int(v) for v in labels],
        "dice": {str(k): v for k, v in dice.items()},
        "dice_mean": float(np.nanmean(list(dice.values()))) if dice else float("nan"),
        "hd95_mm": {str(k): v for k, v in distances.items()},
        "hd95_mm_mean": float(np.mean(valid_hd)) if valid_hd else float("nan"),
    }
