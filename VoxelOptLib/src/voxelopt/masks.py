"""Cost masks on the working grid: where each image was scanned, and the user's masks.

A mask weighs every voxel of the working grid in [0, 1]: 1 = the voxel's features take part in
the solver's cost, 0 = they carry no information there (see :mod:`voxelopt.solver.cost`). Two
sources are multiplied:

* the *scanned region* of the image (``RegistrationConfig.padding_mask``): inside the image's
  grid and outside its *padding slabs*, i.e. whole planes (along any axis) holding nothing but
  the image's minimum value that reach the grid border, the air a thin scan is padded with to
  fill a taller grid. Slabs inside the scan are kept (they are anatomy, or real air);
* an optional user mask (a label map on the image's grid, nonzero = use), e.g. to leave out a
  tumour, metal or the table.

The fixed mask lies on the working grid; the moving mask is taken to the fixed space through
the initial alignment, like the moving features (outside the moving grid: 0).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional

import numpy as np
import SimpleITK as sitk

from .errors import InputError
from .geometry import Grid, check_image, resample_image
from .io import ImageLike, as_image

if TYPE_CHECKING:  # torch is needed by working_mask only; the user-mask checks run before it is loaded
    import torch


def padding_slabs(array: np.ndarray) -> np.ndarray:
    """Boolean (Z, Y, X) map of the padding slabs of an image array (see the module docstring).

    Along each axis, the leading and trailing runs of planes whose every voxel equals the
    array's minimum. An array that is constant everywhere has no slabs (nothing is scanned, or
    everything is).
    """
    padding = np.zeros(array.shape, dtype=bool)
    is_min = array == array.min()
    if is_min.all():
        return padding
    for axis in range(3):
        others = tuple(a for a in range(3) if a != axis)
        flat_plane = is_min.all(axis=others)  # one entry per plane along ``axis``
        scanned = np.flatnonzero(~flat_plane)
        first, last = scanned[0], scanned[-1]
        index = [slice(None)] * 3
        index[axis] = slice(0, first)
        padding[tuple(index)] = True
        index[axis] = slice(last + 1, None)
        padding[tuple(index)] = True
    return padding


def user_mask(mask: Optional[ImageLike], image: sitk.Image, what: str) -> Optional[np.ndarray]:
    """A user mask as a boolean (Z, Y, X) array on ``image``'s grid (nonzero = use), or None.

    The mask is resampled (nearest neighbour) onto the image's grid when its geometry differs;
    outside its own grid it is 0. Raises :class:`InputError` for a non-3-D, multi-component,
    non-finite or empty mask.
    """
    if mask is None:
        return None
    mask = as_image(mask, what)
    check_image(mask, what)
    mask = resample_image(mask, Grid.from_image(image), interpolator=sitk.sitkNearestNeighbor, default=0)
    values = sitk.GetArrayFromImage(mask)
    if not np.isfinite(values).all():
        raise InputError(f"{what} contains NaN or infinite voxels")
    use = values != 0
    if not use.any():
        raise InputError(f"{what} has no nonzero voxel on its image's grid: nothing would be registered")
    return use


def working_mask(image: sitk.Image, feature_grid: Grid, working_grid: Grid, device: "torch.device",
                 padding: bool, user: Optional[np.ndarray] = None,
                 alignment: Optional[np.ndarray] = None) -> "Optional[torch.Tensor]":
    """(1, 1, Z, Y, X) float32 weights of ``image`` on the working grid, or None when all are 1.

    The image-grid mask (scanned region when ``padding``, times ``user``) is resampled like the
    features: linearly onto the feature grid through ``alignment`` (4x4, fixed point x -> image
    point T(x); 0 outside the image), then averaged onto the working grid.
    """
    from .geometry import image_to_tensor, resize_volume

    if not padding and user is None:
        return None
    array = sitk.GetArrayViewFromImage(image)
    use = np.ones(array.shape, dtype=bool) if user is None else user.copy()
    if padding:
        use &= ~padding_slabs(array)
    on_image = sitk.GetImageFromArray(use.astype(np.float32))
    on_image.CopyInformation(image)
    on_grid = resample_image(on_image, feature_grid, alignment, sitk.sitkLinear, 0.0)
    mask = resize_volume(image_to_tensor(on_grid, device), working_grid.shape).clamp_(0.0, 1.0)
    if bool((mask == 1.0).all()):
        return None
    if not bool((mask > 0).any()):
        raise InputError("the masks leave no voxel of the working grid to register")
    return mask.contiguous()
