"""A network's input grid and volume, and its outputs back on an image's grid.

A network sees an image resampled onto a *network grid*: the image's box turned to the
network's orientation (``DICOMOrient`` letters: ``"LPS"`` is the identity direction, ``"LAI"``
points the i, j, k axes to patient left, anterior, inferior), at the network's voxel size (the
box is kept, so the spacing is ``extent / count``), optionally cut to the body and padded at the
far end of each axis to a multiple of the network's stride. Voxels outside the image are air
(:data:`AIR_HU`). The network's tensor axes (n0, n1, n2) are the grid's (i, j, k), i.e. the
(x, y, z) axes of the oriented image (the reverse of SimpleITK's array order).
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import SimpleITK as sitk
import torch

from .grid import Grid
from .resampling import resample_image
from .sampling import resample_axis_aligned, resample_separable, resample_through_field
from .tensors import image_to_tensor

#: HU of air: the value of network-grid voxels outside the image.
AIR_HU = -1024.0


def oriented_grid(image: sitk.Image, orientation: str, spacing_mm: Optional[Sequence[float]] = None) -> Grid:
    """The grid of ``image``'s box with axes toward ``orientation`` (a permutation/flip of the
    axes, no interpolation) and, if given, voxels of about ``spacing_mm`` along (i, j, k) of the
    oriented grid (a number for isotropic voxels); the box is kept."""
    reference = Grid.from_image(image).reference_image()
    grid = Grid.from_image(sitk.DICOMOrient(reference, orientation))
    if spacing_mm is None:
        return grid
    return grid.with_spacings(np.broadcast_to(np.asarray(spacing_mm, dtype=np.float64), (3,)))


def padded_to_multiple(grid: Grid, multiple: int, minimum: int = 0) -> Grid:
    """``grid`` extended at the far end of each axis to a multiple of ``multiple`` voxels, and to
    at least ``minimum`` (a thin image's short axis, for a network that needs a few voxels)."""
    size = [max(int(np.ceil(n / multiple) * multiple), minimum) for n in grid.size]
    return grid.crop((0, 0, 0), size)


def network_array(image: sitk.Image, grid: Grid, device: torch.device) -> torch.Tensor:
    """``image`` (HU) resampled linearly onto ``grid``, air outside, as a (1, 1, n2, n1, n0)
    float32 tensor in array order (k, j, i) of the grid."""
    sampled = resample_image(image, grid, default=AIR_HU, pixel_type=sitk.sitkFloat32)
    return image_to_tensor(sampled, torch.device(device))


def crop_array(array: torch.Tensor, grid: Grid, part: Grid) -> torch.Tensor:
    """What ``network_array(image, part)`` gives, taken from ``array = network_array(image, grid)``
    without resampling again: ``part`` is a crop of ``grid`` (same axes and voxel size, a whole
    number of voxels away, e.g. ``grid.crop`` or ``padded_to_multiple``), and its voxels past
    ``grid`` lie outside the image (``grid`` covers the image's box), where the value is air."""
    linear, offset = part.index_map_to(grid)
    start = np.round(offset).astype(int)
    if not np.allclose(linear, np.eye(3), atol=1e-9) or not np.allclose(offset, start, atol=1e-6):
        raise ValueError("crop_array needs a crop of the grid (same axes and spacing, whole-voxel offset)")
    out = array.new_full((1, 1) + tuple(part.shape), AIR_HU)
    source = [slice(max(0, s), min(n, s + m)) for s, n, m in zip(start, grid.size, part.size)]  # (i, j, k)
    target = [slice(a.start - s, a.stop - s) for a, s in zip(source, start)]
    out[0, 0, target[2], target[1], target[0]] = array[0, 0, source[2], source[1], source[0]]
    return out


def network_volume(image: sitk.Image, grid: Grid, device: torch.device) -> torch.Tensor:
    """``image`` (HU) resampled linearly onto ``grid``, air outside, as a (1, 1, n0, n1, n2)
    float32 tensor in the grid's (i, j, k) axis order (contiguous)."""
    return network_array(image, grid, device).permute(0, 1, 4, 3, 2).contiguous()


def body_grid(volume: torch.Tensor, grid: Grid, threshold_hu: float, margin_mm: float) -> Grid:
    """The part of ``grid`` holding the body: the bounding box of ``volume > threshold_hu``
    ((1, 1, n0, n1, n2) HU on ``grid``) widened by ``margin_mm`` and kept inside ``grid``;
    the whole grid when nothing exceeds the threshold."""
    body = volume[0, 0] > threshold_hu
    if not bool(body.any()):
        return grid
    start, stop = [], []
    for axis in range(3):
        # reduce the other axes in memory order (outer first): fast for a view of an array
        others = sorted((a for a in range(3) if a != axis), key=lambda a: -body.stride(a))
        hits = torch.nonzero(body.any(dim=others[1]).any(dim=others[0] - (others[0] > others[1]))).flatten()
        margin = int(np.ceil(margin_mm / grid.spacing[axis]))
        start.append(max(0, int(hits[0]) - margin))
        stop.append(min(grid.size[axis], int(hits[-1]) + 1 + margin))
    return grid.crop(start, np.subtract(stop, start))


def features_to_image(features: torch.Tensor, grid: Grid, image: sitk.Image) -> torch.Tensor:
    """Network outputs (C, n0, n1, n2) lying on ``grid`` ((i, j, k) axis order) resampled
    trilinearly onto ``image``'s voxel grid: (C, Z, Y, X); image voxels outside ``grid`` take
    the nearest border value.

    Network grids made here (``oriented_grid``, its crops, pads and ``with_size``) have the
    image's axes: they are resampled by ``F.interpolate`` (``resample_axis_aligned``); other
    grids with the image's axes (e.g. a network's output lattice, ``Grid.lattice``) by three 1-D
    passes (``resample_separable``); rotated ones by ``grid_sample``. ``features`` may be a
    (C, n0, n1, n2) view of data stored in array order (C, n2, n1, n0), channels-last or not: the
    ``F.interpolate`` path then keeps that memory format (no transposing copy)."""
    if features.dim() != 4 or tuple(features.shape[1:]) != tuple(grid.size):
        raise ValueError(f"features {tuple(features.shape)} do not match grid size {grid.size}")
    zyx = features.float().permute(0, 3, 2, 1)[None]
    target = Grid.from_image(image)
    for resample in (resample_axis_aligned, resample_separable):
        aligned = resample(zyx, grid, target)
        if aligned is not None:
            return aligned[0]
    return resample_through_field(zyx, grid, target, None, default=None)[0]
