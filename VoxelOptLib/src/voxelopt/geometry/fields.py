"""Displacement fields on a grid: voxels <-> millimetres, resolution changes, ITK images."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import SimpleITK as sitk
import torch
import torch.nn.functional as F

from .checks import check_field_image
from .grid import Grid
from .. import voxels


def voxel_to_mm_field(u: torch.Tensor, grid: Grid) -> torch.Tensor:
    """Voxel field (1, 3, Z, Y, X), channels (dk, dj, di), to mm field (1, 3, Z, Y, X), (dx, dy, dz)."""
    a = torch.as_tensor(grid.index_to_physical, dtype=u.dtype, device=u.device)
    return torch.einsum("rc,bczyx->brzyx", a, u.flip(1))


def mm_to_voxel_field(d: torch.Tensor, grid: Grid) -> torch.Tensor:
    """Inverse of :func:`voxel_to_mm_field`."""
    inv = torch.as_tensor(np.linalg.inv(grid.index_to_physical), dtype=d.dtype, device=d.device)
    return torch.einsum("rc,bczyx->brzyx", inv, d).flip(1)


def resize_volume(x: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """Trilinear resize of (1, C, Z, Y, X) data between grids on the same box
    (:meth:`Grid.with_size`). Halving an even axis averages voxel pairs exactly."""
    if tuple(x.shape[2:]) == tuple(shape):
        return x
    return F.interpolate(x, size=tuple(shape), mode="trilinear", align_corners=False)


def resize_voxel_field(u: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """Move a voxel field between two grids on the same box (exact per-axis rescaling)."""
    src = u.shape[2:]
    if tuple(src) == tuple(shape):
        return u
    scale = torch.tensor([n / m for n, m in zip(shape, src)], dtype=u.dtype, device=u.device)
    return resize_volume(u, shape) * scale.view(1, 3, 1, 1, 1)


def mm_field_to_image(d: torch.Tensor, grid: Grid, dtype: torch.dtype = torch.float64) -> sitk.Image:
    """mm field (1, 3, Z, Y, X) to an ITK displacement-field image on ``grid`` (VectorFloat64, or
    VectorFloat32 with ``dtype=torch.float32``)."""
    arr = d[0].permute(1, 2, 3, 0).detach().to("cpu", dtype).numpy()
    image = sitk.GetImageFromArray(np.ascontiguousarray(arr), isVector=True)
    return grid.apply_to(image)


def image_to_mm_field(image: sitk.Image, device: torch.device) -> torch.Tensor:
    """ITK displacement-field image (3 components, mm) to a (1, 3, Z, Y, X) float32 tensor."""
    check_field_image(image)
    arr = voxels.copy(image).astype(np.float32)  # (Z, Y, X, 3)
    return torch.from_numpy(arr).to(device).permute(3, 0, 1, 2)[None].contiguous()
