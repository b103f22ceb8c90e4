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
  Its label maps have half the resolution, so an exact field scores below 100 % wherever the
  moving labels sit off the half grid's lattice: moved by an odd number of fixed voxels, or on
  a grid offset from the fixed one as after a common ``centers``/``com`` start (the moving
  grid moves with it). This is the official protocol's resolution limit, the same for every
  method; ``"full"`` has no such loss.

The field is scored by :func:`voxelopt.evaluation.evaluate_field` (the code of ``voxelopt
evaluate``) with the metrics of :mod:`voxelopt.metrics`: Dice and HD95 (mm) over the labels
present in *both* the fixed and the moving label maps (a label the warp loses scores Dice 0 and
HD95 = the diagonal of the fixed box); SDlogJ in the Learn2Reg convention
(std of ``log(J + 3)`` over the volume cropped by 2 voxels), ``sdlogj_plain`` = std of
``log J`` where ``J > 0``; ``folding_percent`` = 100 * #(J <= 0) / #voxels. With a ground-truth
field, ``disp_error_mm_mean`` is the mean Euclidean distance (mm) between the estimated and the
true displacement over the evaluation grid, and ``disp_error_mm_labels`` over the fixed labels'
foreground.
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Sequence, Tuple

import numpy as np
import SimpleITK as sitk
import torch

from voxelopt.errors import InputError
from voxelopt.evaluation import box_text, evaluation_grid, evaluation_grid_labels
from voxelopt.evaluation import evaluate_field as evaluate_field_at_scale
from voxelopt.geometry import Grid, image_to_mm_field, resize_volume

#: Protocol name -> evaluation grid size relative to the fixed grid.
PROTOCOLS: Dict[str, float] = {"half": 0.5, "full": 1.0}

_CPU = torch.device("cpu")


def protocol_scale(protocol: str) -> float:
    """The evaluation grid's size relative to the fixed grid under ``protocol``."""
    if protocol not in PROTOCOLS:
        raise InputError(f"unknown evaluation protocol {protocol!r}; choose one of {', '.join(PROTOCOLS)}")
    return PROTOCOLS[protocol]


def check_protocols(protocols: Sequence[str]) -> Tuple[str, ...]:
    """Validate a protocol list (e.g. ``["half", "full"]``) and return it as a tuple."""
    out = tuple(protocols)
    if not out:
        raise InputError("give at least one evaluation protocol")
    for name in out:
        protocol_scale(name)
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
        fixed_labels: the fixed label map, or None (then no Dice/HD95).
        moving_labels: the moving label map on its own grid, or None.
        protocol: ``"half"`` or ``"full"`` (module docstring).
        gt_field: optional true displacement field, same convention, on any grid covering the
            fixed image (resampled linearly onto the evaluation grid).

    Returns:
        ``protocol`` and the metrics of :func:`voxelopt.evaluation.evaluate_field`
        (``sdlogj``, ``folding_percent``, ..., with labels ``dice_mean``, ``dice_initial_mean``,
        ``hd95_mm_mean``, ``hd95_mm_initial_mean``, ``dice`` per label, ``labels``); with
        ``gt_field`` also ``disp_error_mm_mean``, ``disp_error_mm_labels``, ``gt_disp_mm_mean``.
    """
    scale = protocol_scale(protocol)
    metrics: Dict[str, Any] = {"protocol": protocol}
    metrics.update(evaluate_field_at_scale(fixed_labels, moving_labels, field, scale))
    if gt_field is not None:
        grid = evaluation_grid(Grid.from_image(field), scale)
        d = resize_volume(image_to_mm_field(field, _CPU), grid.shape)
        gt = image_to_mm_field(_field_on(gt_field, grid), _CPU)
        error = torch.linalg.vector_norm(d - gt, dim=1)[0].numpy()
        metrics["disp_error_mm_mean"] = float(error.mean())
        metrics["gt_disp_mm_mean"] = float(torch.linalg.vector_norm(gt, dim=1).mean())
        if fixed_labels is not None:
            foreground = evaluation_grid_labels(fixed_labels, grid) > 0
            if np.any(foreground):
                metrics["disp_error_mm_labels"] = float(error[foreground].mean())
    return metrics


def _field_on(field: sitk.Image, grid: Grid) -> sitk.Image:
    """The ground-truth ``field`` on the evaluation ``grid`` (linear); InputError when it does
    not cover that grid (outside its box it would read as zero displacement)."""
    if field.GetNumberOfComponentsPerPixel() != 3:
        raise InputError("the ground-truth field must have 3 components (x, y, z mm)")
    if not Grid.from_image(field).covers(grid):
        raise InputError(f"the ground-truth field does not cover the fixed image (field box "
                         f"{box_text(Grid.from_image(field))}, fixed box {box_text(grid)}, LPS mm): outside its box it "
                         "would count as no displacement; give it on the fixed grid or on one covering it")
    if Grid.from_image(field).same_as(grid):
        return field
    field = sitk.Cast(field, sitk.sitkVectorFloat64)
    return sitk.Resample(field, grid.reference_image(), sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkVectorFloat64)
