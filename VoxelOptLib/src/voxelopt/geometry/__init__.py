"""The physical-geometry contract of voxelopt. Every other module calls this package.

Conventions (read once, used everywhere):

* **Physical space** is ITK's: LPS millimetres. A grid maps a voxel index p = (i, j, k) to the
  point ``x = origin + D @ (spacing * p)`` where D is the 3x3 direction matrix whose *columns*
  are the directions of the i, j, k axes (ITK/SimpleITK convention).
* **Arrays** are in SimpleITK array order (z, y, x) = (k, j, i); torch tensors add leading
  batch/channel dimensions: (1, C, Z, Y, X).
* A **voxel field** ``u`` is a tensor (1, 3, Z, Y, X) on a grid, in voxels of that grid, with
  channel c the displacement along array axis c (so channel 0 is along k, channel 2 along i).
* A **millimetre field** ``d`` is a tensor (1, 3, Z, Y, X) or an ITK vector image whose components
  are the (x, y, z) LPS displacement in mm.
* Both fields are **backward / resampling** fields on the fixed grid: the warped moving image is
  ``warped(x) = moving(x + d(x))``. ``x + d(x)`` is the point of the *moving* image that lands on
  the fixed point x. This is ITK's ``DisplacementFieldTransform`` and Slicer's "FromParent"
  (resampling) transform direction.
* Grids of a registration share the fixed image's *box*: the physical region covered by the
  voxel cubes, ``[origin - spacing/2, origin + (n - 1/2) spacing]`` along each axis direction.
  Changing resolution keeps the box, so a voxel field moves between grids by trilinear
  interpolation with ``align_corners=False`` and a per-axis factor ``n_fine / n_coarse``, which is
  exact (the official code's ``x2`` under-scales coarse motion by up to 10 %).

Modules: :mod:`.grid` (``Grid``), :mod:`.checks` (image and field checks), :mod:`.intensity`
(the HU window), :mod:`.resampling` (SimpleITK resampling through the initial alignment) and
:mod:`.pyramid` (the shapes of the pyramid levels) need no torch; :mod:`.fields` (voxel/mm fields, resolution changes, ITK field
images), :mod:`.sampling` (warping and resampling), :mod:`.tensors` (images <-> tensors) and
:mod:`.network_input` (a network's input grid and volume) use torch and are imported on first
use of one of their names, so ``from voxelopt.geometry import Grid, check_image`` does not
import torch.
"""


from __future__ import annotations

import importlib
from typing import Any

from .checks import check_field_image, check_geometry, check_image  # noqa: F401  (re-exported)
from .grid import Grid  # noqa: F401
from .intensity import window_hu  # noqa: F401
from .pyramid import MIN_LEVEL_SIZE, level_shapes  # noqa: F401
from .resampling import affine_matrix, affine_transform, overlap_fraction, resample_image  # noqa: F401

_LAZY = {
    "fields": ("image_to_mm_field", "mm_field_to_image", "mm_to_voxel_field", "resize_volume", "resize_voxel_field",
               "voxel_to_mm_field"),
    "sampling": ("axis_interpolation", "axis_permutation", "grid_sample", "grid_sample_index", "index_grid", "replicate_pad",
                 "resample_axis_aligned", "resample_separable", "resample_through_field", "warp"),
    "tensors": ("image_to_tensor", "tensor_to_image"),
    "network_input": ("AIR_HU", "body_grid", "crop_array", "features_to_image", "network_array", "network_volume", "oriented_grid", "padded_to_multiple"),
}
_MODULE_OF = {name: module for module, names in _LAZY.items() for name in names}

__all__ = sorted(["Grid", "MIN_LEVEL_SIZE", "affine_matrix", "level_shapes", "affine_transform", "check_field_image", "check_geometry", "check_image",
                  "overlap_fraction", "resample_image", "window_hu", *_MODULE_OF])


def __getattr__(name: str) -> Any:
    if name in _MODULE_OF:
        return getattr(importlib.import_module(f".{_MODULE_OF[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return __all__
