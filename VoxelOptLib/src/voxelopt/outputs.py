"""The outputs of a registration: computed on the grid where they carry information, streamed where
they must be on the full fixed grid.

* The **field** lives on the solver's *working grid* (4 mm by default; the fixed image's box),
  float32, in LPS mm, resampling direction ``warped(x) = moving(x + d(x))``: the solver's field
  plus the initial alignment, no upsampled copy. Anywhere else it is sampled with trilinear
  interpolation exactly as ITK's
  ``DisplacementFieldTransform`` does (align_corners=False on the shared box, border values
  repeated), so ``sitk.Resample(moving, fixed, sitk.DisplacementFieldTransform(field))`` gives the
  library's warped image.
* **Warped images and labels** are computed slab by slab of fixed-grid slices (SimpleITK's
  resampling through the field on the CPU, torch on CUDA), so the peak memory is a few slabs plus
  the input and output arrays; the output keeps the moving image's pixel type.
* **Jacobian determinant**, SDlogJ and folding come from the field on its own grid; the
  **entropy** map stays on the working grid.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from typing import Callable, Optional

import numpy as np
import SimpleITK as sitk
import torch
import torch.nn.functional as F

from .errors import RegistrationCancelled
from .geometry import Grid, image_to_mm_field, mm_field_to_image, mm_to_voxel_field, resize_volume, voxel_to_mm_field
from .metrics import jacobian_determinant

#: Fixed-grid voxels per slab of a streamed warp (bounds the coordinate tensors to ~50 MB).
SLAB_VOXELS = 4 * 1024 * 1024

ProgressCallback = Callable[[float], None]
CancelCallback = Callable[[], bool]


@dataclasses.dataclass
class GridField:
    """A displacement field with its grid: ``data`` (1, 3, Z, Y, X) float32, (x, y, z) LPS mm."""

    data: torch.Tensor
    grid: Grid

    @classmethod
    def from_solver(cls, u_voxels: torch.Tensor, working_grid: Grid, field_grid: Grid,
                    initial: np.ndarray) -> "GridField":
        """The total field on ``field_grid``: the solver's field u (voxels of the working grid)
        composed with the initial alignment T (4x4, fixed -> moving, mm): ``d(x) = T(x + u(x)) - x``."""
        u = resize_volume(voxel_to_mm_field(u_voxels.float(), working_grid), field_grid.shape)
        a = torch.as_tensor(initial[:3, :3], dtype=u.dtype, device=u.device)
        b = torch.as_tensor(initial[:3, 3], dtype=u.dtype, device=u.device).view(1, 3, 1, 1, 1)
        if np.allclose(initial[:3, :3], np.eye(3)):  # a translation: d = u + t
            return cls((u + b).contiguous(), field_grid)
        x = torch.as_tensor(field_grid.physical_points(), dtype=u.dtype, device=u.device)[None]  # (1, 3, Z, Y, X) mm
        d = torch.einsum("rc,bczyx->brzyx", a, x + u) + b - x
        return cls(d.contiguous(), field_grid)

    @classmethod
    def from_image(cls, image: sitk.Image, device: torch.device) -> "GridField":
        """A field from an ITK displacement-field image (3 components, LPS mm)."""
        return cls(image_to_mm_field(image, device), Grid.from_image(image))

    def to_image(self) -> sitk.Image:
        """An ITK displacement-field image (VectorFloat32) on the field's grid."""
        return mm_field_to_image(self.data, self.grid, torch.float32)

    def jacobian(self) -> torch.Tensor:
        """det of the Jacobian of ``x -> x + d(x)`` on the field's grid, (Z, Y, X)."""
        return jacobian_determinant(mm_to_voxel_field(self.data, self.grid))


def _affine_to_index(source: Grid, target: Grid):
    """(M, c) with ``target_index = M @ source_index + c`` for (i, j, k) indices (float64)."""
    inv = np.linalg.inv(target.index_to_physical)
    return inv @ source.index_to_physical, inv @ (np.asarray(source.origin) - np.asarray(target.origin))


def warp_image(
    moving: sitk.Image,
    field: GridField,
    fixed_grid: Grid,
    nearest: bool = False,
    default: Optional[float] = None,
    progress: Optional[ProgressCallback] = None,
    cancel: Optional[CancelCallback] = None,
) -> sitk.Image:
    """``moving(x + d(x))`` on ``fixed_grid``, streamed in slabs; keeps the moving pixel type.

    On a CUDA device the slabs are sampled with torch (:func:`warp_image_torch`); on the CPU
    with SimpleITK's multi-threaded resampling through the field's ``DisplacementFieldTransform``
    (:func:`warp_image_itk`), about 3x faster there. Both give the same values (a test compares
    them).

    Args:
        moving: scalar image (any integer or float type) on its own grid.
        field: the displacement field (mm) with its grid, sampled trilinearly as ITK does.
        nearest: nearest-neighbour interpolation (label maps); otherwise trilinear, rounded and
            clipped to the range of an integer pixel type.
        default: value of points outside the moving image (default: its minimum, i.e. air; 0
            for labels). Points within half a voxel outside take the border value (ITK's rule).
        progress: called with the fraction done after each slab.
        cancel: polled between slabs; True raises :class:`RegistrationCancelled`.
    """
    if field.data.device.type == "cuda":
        return warp_image_torch(moving, field, fixed_grid, nearest, default, progress, cancel)
    return warp_image_itk(moving, field, fixed_grid, nearest, default, progress, cancel)


def warp_image_itk(moving: sitk.Image, field: GridField, fixed_grid: Grid, nearest: bool, default: Optional[float],
                   progress: Optional[ProgressCallback], cancel: Optional[CancelCallback]) -> sitk.Image:
    """:func:`warp_image` with SimpleITK: each slab of fixed-grid slices is resampled through the
    field's ``DisplacementFieldTransform`` (float32 for trilinear, then rounded and clipped like
    :func:`warp_image_torch`)."""
    array = sitk.GetArrayViewFromImage(moving)
    if default is None:
        default = 0.0 if nearest else float(array.min())
    transform = sitk.DisplacementFieldTransform(mm_field_to_image(field.data, field.grid))  # ITK takes 64-bit vectors
    out = np.empty(fixed_grid.shape, dtype=array.dtype)
    Z, Y, X = fixed_grid.shape
    slab = max(1, SLAB_VOXELS // (X * Y))
    pixel = moving.GetPixelID() if nearest else sitk.sitkFloat32
    interpolator = sitk.sitkNearestNeighbor if nearest else sitk.sitkLinear
    for z0 in range(0, Z, slab):
        if cancel is not None and cancel():
            raise RegistrationCancelled("registration cancelled")
        z1 = min(Z, z0 + slab)
        reference = sitk.Image([X, Y, z1 - z0], sitk.sitkUInt8)
        reference.SetSpacing(fixed_grid.spacing)
        reference.SetDirection(fixed_grid.direction)
        reference.SetOrigin(tuple(np.asarray(fixed_grid.origin) + fixed_grid.index_to_physical @ np.array([0.0, 0.0, z0])))
        resampled = sitk.Resample(moving, reference, transform, interpolator, float(default), pixel)
        out[z0:z1] = _to_dtype(sitk.GetArrayViewFromImage(resampled), out.dtype)  # the view needs ``resampled``
        if progress is not None:
            progress(z1 / Z)
    return fixed_grid.apply_to(sitk.GetImageFromArray(out))


def warp_image_torch(moving: sitk.Image, field: GridField, fixed_grid: Grid, nearest: bool, default: Optional[float],
                     progress: Optional[ProgressCallback], cancel: Optional[CancelCallback]) -> sitk.Image:
    """:func:`warp_image` with torch on the field's device: the field and the moving indices of each
    slab by broadcasting, then the block of the moving image the slab needs, sampled once."""
    device = field.data.device
    moving_grid = Grid.from_image(moving)
    array = sitk.GetArrayViewFromImage(moving)
    if default is None:
        default = 0.0 if nearest else float(array.min())
    with warnings.catch_warnings():  # read-only view of the image buffer: never written to
        warnings.simplefilter("ignore", UserWarning)
        source = torch.from_numpy(_torch_compatible(array)).to(device)
    out = np.empty(fixed_grid.shape, dtype=array.dtype)

    to_moving, moving_offset = _affine_to_index(fixed_grid, moving_grid)
    to_field, field_offset = _affine_to_index(fixed_grid, field.grid)
    d_to_moving = np.linalg.inv(moving_grid.index_to_physical)
    t = lambda m: torch.as_tensor(np.asarray(m, dtype=np.float64), dtype=torch.float32, device=device)  # noqa: E731
    moving_size = t(moving_grid.size)
    # normalised field coordinates and moving indices are affine in the fixed index (i, j, k)
    field_norm = t(2.0 * to_field / np.asarray(field.grid.size)[:, None])
    field_norm_offset = t((2.0 * field_offset + 1.0) / np.asarray(field.grid.size) - 1.0)
    to_moving, moving_offset, d_to_moving = t(to_moving), t(moving_offset), t(d_to_moving)
    Z, Y, X = fixed_grid.shape
    slab = max(1, SLAB_VOXELS // (X * Y))
    i_terms = torch.arange(X, dtype=torch.float32, device=device).view(1, 1, X, 1)
    j_terms = torch.arange(Y, dtype=torch.float32, device=device).view(1, Y, 1, 1)
    for z0 in range(0, Z, slab):
        if cancel is not None and cancel():
            raise RegistrationCancelled("registration cancelled")
        z1 = min(Z, z0 + slab)
        k_terms = torch.arange(z0, z1, dtype=torch.float32, device=device).view(-1, 1, 1, 1)

        def affine(matrix: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:
            # (z, Y, X, 3): matrix @ (i, j, k) + offset, by broadcasting
            return (k_terms * matrix[:, 2] + offset) + j_terms * matrix[:, 1] + i_terms * matrix[:, 0]

        d = F.grid_sample(field.data, affine(field_norm, field_norm_offset)[None], mode="bilinear",
                          padding_mode="border", align_corners=False)[0]  # (3, z, Y, X) mm
        q = affine(to_moving, moving_offset)
        for c in range(3):  # q += d_to_moving @ d, without a (z, Y, X, 3) matmul copy
            q += d[c, ..., None] * d_to_moving[:, c]
        del d
        out[z0:z1] = _sample_block(source, q, moving_size, nearest, float(default), out.dtype)
        if progress is not None:
            progress(z1 / Z)
    return fixed_grid.apply_to(sitk.GetImageFromArray(out))


def _sample_block(source: torch.Tensor, q: torch.Tensor, size: torch.Tensor, nearest: bool, default: float,
                  dtype: np.dtype) -> np.ndarray:
    """Sample ``source`` (Z, Y, X) at moving indices ``q`` (z, Y, X, 3) reading only the block they need.

    Points more than half a voxel outside the image take ``default``; the others are clamped to
    the image box, so the block holds every voxel trilinear interpolation reads.
    """
    inside = ((q >= -0.5) & (q <= size - 0.5)).all(dim=-1)
    q = torch.minimum(torch.maximum(q, torch.full_like(size, -0.5)), size - 0.5)
    low = q.reshape(-1, 3).amin(dim=0).floor().clamp(min=0)
    high = torch.minimum(q.reshape(-1, 3).amax(dim=0).floor() + 1, size - 1)
    (i0, j0, k0), (i1, j1, k1) = low.long().tolist(), high.long().tolist()
    block = source[k0:k1 + 1, j0:j1 + 1, i0:i1 + 1].to(torch.float32)[None, None]
    q -= low
    q.mul_(2.0 / (high - low + 1)).add_(1.0 / (high - low + 1) - 1.0)  # normalised, align_corners=False
    sampled = F.grid_sample(block, q[None], mode="nearest" if nearest else "bilinear", padding_mode="border",
                            align_corners=False)[0, 0]
    sampled.masked_fill_(~inside, default)
    return _to_dtype(sampled.cpu().numpy(), dtype)


def _to_dtype(values: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Sampled values in the output type: rounded and clipped to an integer type's range."""
    if np.issubdtype(dtype, np.integer) and not np.issubdtype(values.dtype, np.integer):
        info = np.iinfo(dtype)
        values = np.clip(np.rint(values), info.min, info.max)
    return values.astype(dtype, copy=False)


def _torch_compatible(array: np.ndarray) -> np.ndarray:
    """The voxels in a dtype torch holds (unsigned 16/32-bit become wider signed types)."""
    if array.dtype in (np.uint16,):
        return array.astype(np.int32)
    if array.dtype in (np.uint32, np.uint64):
        return array.astype(np.int64)
    return np.ascontiguousarray(array)


def resample_map(image: sitk.Image, grid: Grid, vector: bool = False) -> sitk.Image:
    """A map (entropy, Jacobian) or field on another grid of the same box: trilinear, float32."""
    pixel = sitk.sitkVectorFloat32 if vector else sitk.sitkFloat32
    return sitk.Resample(image, grid.reference_image(), sitk.Transform(), sitk.sitkLinear, 0.0, pixel)


def estimate_peak_bytes(fixed: sitk.Image, moving: sitk.Image, feature_grid: Grid, working_grid: Grid, k: int,
                        channels: int, with_labels: bool) -> int:
    """A conservative estimate of the peak memory (bytes) of one registration on one device.

    Counts the inputs, the larger of the feature stage (both images' feature maps and their
    working copies) and the solver (cost volume, its filtered copy and softmax), and the streamed
    outputs (the warped image in the moving pixel type, label maps, slab buffers).
    """
    def voxels(grid_or_image) -> int:
        size = grid_or_image.size if isinstance(grid_or_image, Grid) else grid_or_image.GetSize()
        return int(np.prod(size))

    fixed_bytes = voxels(fixed) * fixed.GetSizeOfPixelComponent()
    moving_bytes = voxels(moving) * moving.GetSizeOfPixelComponent()
    features = voxels(feature_grid) * 4 * (2 * channels + 4)
    solver = voxels(working_grid) * 4 * (3 * (2 * k + 1) ** 3 + 4 * channels)
    outputs = voxels(fixed) * moving.GetSizeOfPixelComponent() + SLAB_VOXELS * 4 * 16
    labels = 2 * (voxels(fixed) + voxels(moving)) if with_labels else 0
    return int(fixed_bytes + moving_bytes + labels + max(features, solver) + outputs)


def available_bytes(device: torch.device) -> Optional[int]:
    """Free memory on ``device`` (CUDA: free device memory; CPU: MemAvailable), None if unknown."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def human_bytes(n: float) -> str:
    """``n`` bytes as GB or MB text."""
    return f"{n / 1e9:.1f} GB" if n >= 1e9 else f"{math.ceil(n / 1e6)} MB"
