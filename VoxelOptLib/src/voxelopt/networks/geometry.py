"""Geometry helpers shared by the network extractors.

Conventions: a SimpleITK image's continuous index is (x, y, z); its array is (z, y, x). A
network grid is described by a :class:`GridSpec`: a tensor shape (n0, n1, n2) and the 4x4
matrix mapping a continuous *tensor* index (a0, a1, a2) to a physical point (mm, LPS world).
Tensor axis order is whatever the network uses (e.g. x, y, z of an oriented image).
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Optional, Sequence, Tuple

import numpy as np
import SimpleITK as sitk
import torch
import torch.nn.functional as F

from ..errors import InputError

#: Target number of output voxels x channels processed per resampling slab (bounds memory).
_SLAB_ELEMENTS = 32 * 1024 * 1024


@dataclasses.dataclass(frozen=True)
class GridSpec:
    """A voxel grid: tensor shape (n0, n1, n2) and index->physical 4x4 matrix (mm)."""

    shape: Tuple[int, int, int]
    index_to_physical: np.ndarray


def check_image(image: sitk.Image) -> None:
    """Raise InputError unless ``image`` is a scalar 3-D image."""
    if not isinstance(image, sitk.Image):
        raise InputError(f"expected a SimpleITK image, got {type(image).__name__}")
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(
            f"network features need a scalar 3-D image, got {image.GetDimension()}-D with "
            f"{image.GetNumberOfComponentsPerPixel()} component(s) per voxel"
        )


def image_index_to_physical(image: sitk.Image) -> np.ndarray:
    """4x4 matrix mapping a continuous (x, y, z) index of ``image`` to a physical point."""
    direction = np.array(image.GetDirection(), dtype=np.float64).reshape(3, 3)
    matrix = np.eye(4)
    matrix[:3, :3] = direction @ np.diag(image.GetSpacing())
    matrix[:3, 3] = image.GetOrigin()
    return matrix


def orient(image: sitk.Image, code: str) -> sitk.Image:
    """Permute/flip ``image`` so that its x, y, z axes point toward ``code`` (e.g. ``"LAI"``).

    Only axis permutations and flips: no interpolation. The letters follow SimpleITK's
    ``DICOMOrient``: ``"LPS"`` is the identity direction.
    """
    return sitk.DICOMOrient(image, code)


def to_xyz_tensor(image: sitk.Image, device: torch.device) -> torch.Tensor:
    """The image as a float32 tensor indexed (x, y, z)."""
    array = sitk.GetArrayFromImage(image).astype(np.float32, copy=False)
    return torch.from_numpy(np.ascontiguousarray(array.transpose(2, 1, 0))).to(device)


def xyz_grid_spec(image: sitk.Image) -> GridSpec:
    """The GridSpec of an image whose tensor is indexed (x, y, z) (see :func:`to_xyz_tensor`)."""
    return GridSpec(tuple(int(s) for s in image.GetSize()), image_index_to_physical(image))


def resized_grid(parent: GridSpec, start: Sequence[int], size: Sequence[int], out_shape: Sequence[int]) -> GridSpec:
    """The grid produced by ``F.interpolate(align_corners=False)`` of a crop of ``parent``.

    The crop starts at tensor index ``start`` with ``size`` voxels; it is resized to
    ``out_shape``. Output voxel i along an axis sits at parent index
    ``start + (i + 0.5) * size / out - 0.5``.
    """
    scale = np.array(size, dtype=np.float64) / np.array(out_shape, dtype=np.float64)
    offset = np.array(start, dtype=np.float64) + 0.5 * scale - 0.5
    local = np.eye(4)
    local[:3, :3] = np.diag(scale)
    local[:3, 3] = offset
    return GridSpec(tuple(int(s) for s in out_shape), parent.index_to_physical @ local)


def lattice_grid(parent: GridSpec, origin_index: Sequence[float], step_index: Sequence[float],
                 out_shape: Sequence[int]) -> GridSpec:
    """A regular lattice in ``parent``: voxel i along axis k sits at parent index origin[k] + i * step[k]."""
    local = np.eye(4)
    local[:3, :3] = np.diag(np.asarray(step_index, dtype=np.float64))
    local[:3, 3] = np.asarray(origin_index, dtype=np.float64)
    return GridSpec(tuple(int(s) for s in out_shape), parent.index_to_physical @ local)


def resample_isotropic(image: sitk.Image, spacing_mm: float, default_value: float = -1024.0) -> sitk.Image:
    """Linear resampling to isotropic ``spacing_mm`` over the same physical extent and direction."""
    old_spacing = np.array(image.GetSpacing(), dtype=np.float64)
    old_size = np.array(image.GetSize(), dtype=np.float64)
    if np.allclose(old_spacing, spacing_mm, rtol=1e-6, atol=1e-9):
        return image
    new_size = np.maximum(1, np.round(old_size * old_spacing / spacing_mm)).astype(int)
    # Keep the outer edge of the first voxel: continuous index -0.5 stays where it was.
    first_centre = -0.5 + 0.5 * spacing_mm / old_spacing
    origin = image.TransformContinuousIndexToPhysicalPoint([float(v) for v in first_centre])
    return sitk.Resample(
        image, [int(v) for v in new_size], sitk.Transform(), sitk.sitkLinear, origin,
        (float(spacing_mm),) * 3, image.GetDirection(), float(default_value), sitk.sitkFloat32,
    )


WeightFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def resample_to_image(features: torch.Tensor, grid: GridSpec, image: sitk.Image,
                      out: Optional[torch.Tensor] = None, weight_fn: Optional[WeightFn] = None,
                      weight_sum: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Trilinearly resample ``features`` (C, n0, n1, n2) on ``grid`` onto ``image``'s voxel grid.

    Points outside ``grid`` take the nearest border value. Work is done in z-slabs so memory
    stays bounded by the output size.

    Args:
        features: (C, n0, n1, n2) tensor on ``grid``.
        grid: where ``features`` lie.
        image: the target grid (its voxels, not its intensities).
        out: optional (C, Z, Y, X) tensor to accumulate into (``out += w * sample``).
        weight_fn: optional per-voxel weight from the continuous grid indices (a0, a1, a2).
        weight_sum: optional (Z, Y, X) tensor that receives the sum of the weights.

    Returns:
        (C, Z, Y, X) float32 tensor on ``features.device``.
    """
    if features.dim() != 4 or tuple(features.shape[1:]) != tuple(grid.shape):
        raise ValueError(f"features {tuple(features.shape)} do not match grid {grid.shape}")
    device = features.device
    channels = features.shape[0]
    size_x, size_y, size_z = image.GetSize()
    if out is None:
        out = torch.zeros((channels, size_z, size_y, size_x), dtype=torch.float32, device=device)
    matrix = np.linalg.inv(grid.index_to_physical) @ image_index_to_physical(image)
    m = torch.as_tensor(matrix[:3], dtype=torch.float64, device=device)
    norm = torch.tensor([2.0 / max(n - 1, 1) for n in grid.shape], dtype=torch.float64, device=device)
    src = features.unsqueeze(0).float()
    slab = max(1, _SLAB_ELEMENTS // max(1, (channels + 4) * size_x * size_y))
    ys = torch.arange(size_y, dtype=torch.float64, device=device)
    xs = torch.arange(size_x, dtype=torch.float64, device=device)
    for z0 in range(0, size_z, slab):
        z1 = min(size_z, z0 + slab)
        zs = torch.arange(z0, z1, dtype=torch.float64, device=device)
        zz, yy, xx = torch.meshgrid(zs, ys, xs, indexing="ij")
        idx = torch.stack((xx, yy, zz, torch.ones_like(xx)), dim=-1)  # (z, y, x, 4) image (x,y,z,1)
        a = idx @ m.T  # (z, y, x, 3) grid tensor indices (a0, a1, a2)
        u = a * norm - 1.0
        sample_grid = torch.stack((u[..., 2], u[..., 1], u[..., 0]), dim=-1).float().unsqueeze(0)
        sampled = F.grid_sample(src, sample_grid, mode="bilinear", padding_mode="border", align_corners=True)[0]
        if weight_fn is None:
            out[:, z0:z1] += sampled
        else:
            w = weight_fn(a[..., 0], a[..., 1], a[..., 2]).float()
            out[:, z0:z1] += sampled * w
            if weight_sum is not None:
                weight_sum[z0:z1] += w
    return out


def network_input(image: sitk.Image, orientation: str, spacing_mm: float, device: torch.device):
    """Check ``image``, orient it, resample it isotropically and return ``(prepared, volume)``:
    the prepared SimpleITK image and its (x, y, z)-ordered tensor on ``device``."""
    check_image(image)
    prepared = resample_isotropic(orient(sitk.Cast(image, sitk.sitkFloat32), orientation), spacing_mm)
    return prepared, to_xyz_tensor(prepared, torch.device(device))
