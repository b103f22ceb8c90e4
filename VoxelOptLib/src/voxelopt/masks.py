"""Cost masks on the working grid: where each image was scanned, and the user's masks.

A mask weighs every voxel of the working grid in [0, 1]: 1 = the voxel's features take part in
the solver's cost, 0 = they carry no information there (see :mod:`voxelopt.solver.cost`). Two
sources are multiplied:

* the *scanned region* of the image (``RegistrationConfig.padding_mask``): inside the image's
  grid and outside its *padding slabs*, i.e. runs of whole planes (along any axis) from the grid
  border inward that each hold one value only, the value of the border plane: the constant a
  thin scan is padded with to fill a taller grid (typically -1024 HU; it need not be the
  image's minimum: scanners store air noise below it, or -3024 outside the reconstruction
  circle). Constant planes inside the scan are kept (they are anatomy, or real air);
* an optional user mask (a label map on the image's grid, nonzero = use), e.g. to leave out a
  tumour, metal or the table.

The fixed mask lies on the working grid; the moving mask is taken to the fixed space through
the initial alignment, like the moving features (outside the moving grid: 0).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional, Tuple

import numpy as np
import SimpleITK as sitk

from .errors import InputError
from .geometry import Grid, check_image, resample_image
from .io import ImageLike, as_image
from . import voxels

if TYPE_CHECKING:  # torch is needed by working_mask only; the user-mask checks run before it is loaded
    import torch


def scanned_box(array: np.ndarray) -> Tuple[Tuple[int, int], ...]:
    """The scanned region of an image array: per array axis (z, y, x), the first and last index
    of the planes that are not padding (see the module docstring); the whole axis when the array
    is constant (nothing is scanned, or everything is). Reads the padding planes and at most as
    many again per side (:func:`_padding_planes`), not the whole array."""
    box = []
    for axis, n in enumerate(array.shape):
        first = _padding_planes(array, axis, from_end=False)
        if first == n:  # every plane holds the one value: a constant array
            return tuple((0, m - 1) for m in array.shape)
        box.append((first, n - 1 - _padding_planes(array, axis, from_end=True)))
    return tuple(box)


def _padding_planes(array: np.ndarray, axis: int, from_end: bool) -> int:
    """How many planes along ``axis``, from its first (or, ``from_end``, its last) plane inward,
    hold only the value of that border plane's first voxel (0 when the border plane itself holds
    two values or more).

    The planes are read in blocks of consecutive planes, 8 then doubling, so at most about twice
    the padding (and 8 planes where there is none): a plane across the last axis alone is one
    voxel per row, which costs a memory line per voxel (one 512x512x600 image of the benchmark
    pair, 56 and 16 padding planes per side along y and x: 0.22 s read plane by plane, 0.085 s in
    blocks)."""
    n = array.shape[axis]
    border = [0] * array.ndim
    border[axis] = n - 1 if from_end else 0
    value = array[tuple(border)]
    others = tuple(a for a in range(array.ndim) if a != axis)
    done, block = 0, 8
    while done < n:
        count = min(block, n - done)
        planes = [slice(None)] * array.ndim
        planes[axis] = slice(n - done - count, n - done) if from_end else slice(done, done + count)
        constant = np.all(array[tuple(planes)] == value, axis=others)  # per plane, in array order
        if from_end:
            constant = constant[::-1]
        if not constant.all():
            return done + int(np.argmin(constant))
        done += count
        block *= 2
    return n


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
    values = voxels.view(mask)
    if values.dtype.kind == "f" and not np.isfinite(values).all():  # integer masks are finite
        raise InputError(f"{what} contains NaN or infinite voxels")
    use = values != 0
    if not use.any():
        raise InputError(f"{what} has no nonzero voxel on its image's grid: nothing would be registered")
    return use


def clear_padding(values: np.ndarray, image_array: np.ndarray) -> None:
    """Set ``values`` (an array of ``image_array``'s shape) to 0, in place, on the image's padding
    slabs: outside its :func:`scanned_box`."""
    for axis, (first, last) in enumerate(scanned_box(image_array)):
        before, after = [slice(None)] * values.ndim, [slice(None)] * values.ndim
        before[axis], after[axis] = slice(0, first), slice(last + 1, None)
        values[tuple(before)] = 0
        values[tuple(after)] = 0


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
    array = voxels.view(image)
    if user is None:  # the scanned region only: a box, sampled without an image-sized mask
        on_grid = _box_on_grid(image, scanned_box(array), feature_grid, alignment, device)
    else:  # 1 byte per image voxel, interpolated in double by ITK into float32 (as a float32 image would be)
        use = user.astype(np.uint8)
        if padding:
            clear_padding(use, array)
        on_image = sitk.GetImageFromArray(use)
        on_image.CopyInformation(image)
        on_grid = image_to_tensor(resample_image(on_image, feature_grid, alignment, sitk.sitkLinear, 0.0,
                                                 sitk.sitkFloat32), device)
    mask = resize_volume(on_grid, working_grid.shape).clamp_(0.0, 1.0)
    if bool((mask == 1.0).all()):
        return None
    if not bool((mask > 0).any()):
        raise InputError("the masks leave no voxel of the working grid to register")
    return mask.contiguous()


def _box_on_grid(image: sitk.Image, box_zyx: Tuple[Tuple[int, int], ...], grid: Grid,
                 alignment: Optional[np.ndarray], device: "torch.device") -> "torch.Tensor":
    """(1, 1, Z, Y, X) float32 on ``grid``: the indicator of an index box of ``image``, sampled
    at ``alignment(x)`` with linear interpolation and 0 more than half a voxel outside the
    image, exactly as ``sitk.Resample(indicator, grid, alignment, sitkLinear, 0)`` would.

    Trilinear interpolation of a product of per-axis indicators is the product of their linear
    interpolations, so no image-sized array is made: per axis, the continuous image index p of
    every grid point (affine in the grid index) and the ramp ``clamp(min(p - first + 1,
    last + 1 - p), 0, 1)`` at p clamped to the image.
    """
    import torch

    image_grid = Grid.from_image(image)
    linear, offset = grid.index_map_to(image_grid, alignment)  # image continuous index, affine in the grid index
    axes = [torch.arange(n, dtype=torch.float64, device=device) for n in grid.size]  # i, j, k
    views = [axes[0].view(1, 1, -1), axes[1].view(1, -1, 1), axes[2].view(-1, 1, 1)]
    out = None
    for a, (first, last) in zip(range(3), reversed(box_zyx)):  # image axes i, j, k
        # broadcast sums of the grid axes p depends on (axis-aligned grids: one axis, no grid-sized array)
        p = torch.full((1, 1, 1), float(offset[a]), dtype=torch.float64, device=device)
        for b in range(3):
            if abs(linear[a, b]) > 1e-12:
                p = p + views[b] * linear[a, b]
        p = p.to(torch.float32)
        n = image_grid.size[a]
        inside = (p >= -0.5) & (p <= n - 0.5)
        p.clamp_(0, n - 1)
        ramp = torch.minimum(p - (first - 1), (last + 1) - p).clamp_(0.0, 1.0).masked_fill_(~inside, 0.0)
        out = ramp if out is None else out * ramp  # broadcast: grid-sized only once the axes meet
    return out.expand(grid.shape).contiguous()[None, None]
