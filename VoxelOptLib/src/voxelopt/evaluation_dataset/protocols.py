"""The two evaluation protocols, applied identically to every method's displacement field.

Every method (VoxelOpt or a peer) hands back one displacement field on the fixed image's grid
(LPS mm, resampling direction: ``warped(x) = moving(x + d(x))``). The metrics are then computed
from that field only, so all methods are scored by the same code:

* ``"full"``: on the fixed grid (the 2 mm grid of the development data). The moving labels are
  warped through the field with nearest neighbour.
* ``"half"``: the official code's protocol, what the paper reports: everything on the fixed
  box at half the voxel count per axis (96 x 80 x 128 at 4 mm for the paper's grid). The field
  is resized to that grid (a 2-voxel average per axis), the label maps are resampled onto it
  with nearest neighbour, and the moving labels are warped there. HD95 uses the half grid's
  spacing (4 mm). The engine solves at this grid (``working_scale`` 0.5), so for VoxelOpt the
  field evaluated here is its solver's field, trilinearly upsampled to 2 mm and averaged back.

Metric conventions (those of :mod:`voxelopt.metrics`): Dice and HD95 (mm) over the labels
present in *both* the fixed and the moving label maps (Learn2Reg's rule; a label that vanishes
after warping scores Dice 0 and is skipped for HD95); SDlogJ in the Learn2Reg convention
(std of ``log(J + 3)`` over the volume cropped by 2 voxels), ``sdlogj_plain`` = std of
``log J`` where ``J > 0``; ``folding_percent`` = 100 * #(J <= 0) / #voxels. With a ground-truth
field, ``disp_error_mm_mean`` is the mean Euclidean distance (mm) between the estimated and the
true displacement over the evaluation grid, and ``disp_error_mm_labels`` over the fixed labels'
foreground.
"""

from __future__ import annotations

from typing import Any, Dict, Optional

import numpy as np
import SimpleITK as sitk
import torch

from ..errors import InputError
from ..geometry import (
    Grid,
    image_to_mm_field,
    image_to_tensor,
    mm_to_voxel_field,
    resample_image,
    resample_through_field,
    resize_volume,
)
from ..metrics import common_labels, jacobian_determinant, jacobian_statistics, label_metrics

PROTOCOLS = ("half", "full")

_CPU = torch.device("cpu")


def evaluation_grid(fixed_grid: Grid, protocol: str) -> Grid:
    """The grid a protocol evaluates on: the fixed grid (``full``) or it at half size (``half``)."""
    if protocol == "full":
        return fixed_grid
    if protocol == "half":
        return fixed_grid.scaled(0.5)
    raise InputError(f"unknown evaluation protocol {protocol!r}; choose one of {', '.join(PROTOCOLS)}")


def check_protocols(protocols: Any) -> tuple:
    """Validate a protocol list (e.g. ``["half", "full"]``) and return it as a tuple."""
    out = tuple(protocols)
    if not out:
        raise InputError("give at least one evaluation protocol")
    for name in out:
        evaluation_grid(Grid((4, 4, 4), (1.0,) * 3, (0.0,) * 3, (1, 0, 0, 0, 1, 0, 0, 0, 1)), name)
    return out


def evaluate_field(
    field: sitk.Image,
    fixed_labels: Optional[sitk.Image],
    moving_labels: Optional[sitk.Image],
    protocol: str,
    gt_field: Optional[sitk.Image] = None,
) -> Dict[str, Any]:
    """Metrics of one displacement field under one protocol.

    Args:
        field: the method's displacement field on the fixed grid (3 components, LPS mm,
            ``warped(x) = moving(x + field(x))``).
        fixed_labels: the fixed label map (resampled onto the field's grid with nearest
            neighbour when its geometry differs), or None (then no Dice/HD95).
        moving_labels: the moving label map on its own grid, or None.
        protocol: ``"half"`` or ``"full"`` (module docstring).
        gt_field: optional true displacement field, same convention, on any grid covering the
            fixed image (resampled linearly onto the evaluation grid).

    Returns:
        ``sdlogj``, ``sdlogj_plain``, ``folding_percent``, ``jacobian_min``, ``jacobian_max``;
        with labels ``dice_mean``, ``dice_initial_mean``, ``hd95_mm_mean``,
        ``hd95_mm_initial_mean``, ``dice`` (per label), ``labels``; with ``gt_field``
        ``disp_error_mm_mean``, ``disp_error_mm_labels``, ``gt_disp_mm_mean``.
    """
    fixed_grid = Grid.from_image(field)
    grid = evaluation_grid(fixed_grid, protocol)
    d = resize_volume(image_to_mm_field(field, _CPU), grid.shape)
    metrics: Dict[str, Any] = {"protocol": protocol, "grid_size": list(grid.size),
                               "grid_spacing_mm": [round(v, 6) for v in grid.spacing]}
    metrics.update(jacobian_statistics(jacobian_determinant(mm_to_voxel_field(d, grid)).numpy()))

    fixed_np = None
    if fixed_labels is not None and moving_labels is not None:
        fixed_np = _labels_on(fixed_labels, grid)
        labels = common_labels(sitk.GetArrayViewFromImage(fixed_labels), sitk.GetArrayViewFromImage(moving_labels))
        moving_grid = Grid.from_image(moving_labels)
        moving_eval_grid = evaluation_grid(moving_grid, protocol)
        moving_t = image_to_tensor(resample_image(moving_labels, moving_eval_grid, None, sitk.sitkNearestNeighbor, 0), _CPU)
        spacing_zyx = grid.spacing[::-1]
        warped = resample_through_field(moving_t, moving_eval_grid, grid, d, "nearest", 0.0)
        initial = resample_through_field(moving_t, moving_eval_grid, grid, None, "nearest", 0.0)
        after = label_metrics(fixed_np, _to_int(warped), spacing_zyx, labels)
        before = label_metrics(fixed_np, _to_int(initial), spacing_zyx, labels)
        # A label lost by the warp scores 0 (not NaN) so the mean is not flattered.
        dice = {k: (0.0 if not np.isfinite(v) else v) for k, v in after["dice"].items()}
        metrics.update({
            "labels": after["labels"],
            "dice": dice,
            "dice_mean": float(np.mean(list(dice.values()))) if dice else float("nan"),
            "dice_initial_mean": before["dice_mean"],
            "hd95_mm": after["hd95_mm"],
            "hd95_mm_mean": after["hd95_mm_mean"],
            "hd95_mm_initial_mean": before["hd95_mm_mean"],
        })

    if gt_field is not None:
        gt = image_to_mm_field(_field_on(gt_field, grid), _CPU)
        error = torch.linalg.vector_norm(d - gt, dim=1)[0].numpy()
        metrics["disp_error_mm_mean"] = float(error.mean())
        metrics["gt_disp_mm_mean"] = float(torch.linalg.vector_norm(gt, dim=1).mean())
        if fixed_np is not None and np.any(fixed_np > 0):
            metrics["disp_error_mm_labels"] = float(error[fixed_np > 0].mean())
    return metrics


def _labels_on(labels: sitk.Image, grid: Grid) -> np.ndarray:
    return sitk.GetArrayFromImage(resample_image(labels, grid, None, sitk.sitkNearestNeighbor, 0)).astype(np.int32)


def _to_int(x: torch.Tensor) -> np.ndarray:
    return x.round().to(torch.int32).numpy()[0, 0]


def _field_on(field: sitk.Image, grid: Grid) -> sitk.Image:
    if field.GetNumberOfComponentsPerPixel() != 3:
        raise InputError("the ground-truth field must have 3 components (x, y, z mm)")
    if Grid.from_image(field).same_as(grid):
        return field
    field = sitk.Cast(field, sitk.sitkVectorFloat64)
    return sitk.Resample(field, grid.reference_image(), sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkVectorFloat64)
