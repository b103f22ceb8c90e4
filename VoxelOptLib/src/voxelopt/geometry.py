"""The physical-geometry contract of voxelopt. Every other module calls this one.

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
  exact (no ``x2`` approximation; compare spec section 4a).
"""

from __future__ import annotations

import dataclasses
from typing import Optional, Sequence, Tuple

import numpy as np
import SimpleITK as sitk
import torch
import torch.nn.functional as F

from .errors import InputError


@dataclasses.dataclass(frozen=True)
class Grid:
    """A voxel grid in physical space.

    Attributes:
        size: number of voxels along (i, j, k) = (x, y, z), ITK order.
        spacing: voxel size in mm along (i, j, k).
        origin: physical (LPS, mm) position of voxel (0, 0, 0)'s centre.
        direction: 3x3 direction matrix, row-major tuple of 9; columns are the axis directions.
    """

    size: Tuple[int, int, int]
    spacing: Tuple[float, float, float]
    origin: Tuple[float, float, float]
    direction: Tuple[float, ...]

    @classmethod
    def from_image(cls, image: sitk.Image) -> "Grid":
        return cls(
            tuple(int(v) for v in image.GetSize()),
            tuple(float(v) for v in image.GetSpacing()),
            tuple(float(v) for v in image.GetOrigin()),
            tuple(float(v) for v in image.GetDirection()),
        )

    # -------------------------------------------------------------- derived quantities
    @property
    def shape(self) -> Tuple[int, int, int]:
        """Array shape (Z, Y, X)."""
        return (self.size[2], self.size[1], self.size[0])

    @property
    def direction_matrix(self) -> np.ndarray:
        return np.asarray(self.direction, dtype=np.float64).reshape(3, 3)

    @property
    def index_to_physical(self) -> np.ndarray:
        """3x3 matrix A with ``x = origin + A @ p`` for an (i, j, k) index p."""
        return self.direction_matrix * np.asarray(self.spacing)[None, :]

    @property
    def num_voxels(self) -> int:
        return int(np.prod(self.size))

    def center(self) -> np.ndarray:
        """Physical centre of the grid (mm)."""
        return np.asarray(self.origin) + self.index_to_physical @ ((np.asarray(self.size) - 1) / 2.0)

    def reference_image(self, pixel_type: int = sitk.sitkUInt8) -> sitk.Image:
        """An image with this geometry (for resampling onto the grid)."""
        image = sitk.Image([int(v) for v in self.size], pixel_type)
        self.apply_to(image)
        return image

    def apply_to(self, image: sitk.Image) -> sitk.Image:
        """Set this grid's spacing, origin and direction on ``image`` (same size); returns it."""
        image.SetSpacing(self.spacing)
        image.SetOrigin(self.origin)
        image.SetDirection(self.direction)
        return image

    def same_as(self, other: "Grid", tol: float = 1e-6) -> bool:
        return (
            self.size == other.size
            and np.allclose(self.spacing, other.spacing, atol=tol)
            and np.allclose(self.origin, other.origin, atol=tol * 1e3)
            and np.allclose(self.direction, other.direction, atol=tol)
        )

    # -------------------------------------------------------------- new grids on the same box
    def with_size(self, size: Sequence[int]) -> "Grid":
        """A grid on the same box with ``size`` voxels per axis (spacing = extent / size)."""
        size = tuple(max(1, int(n)) for n in size)
        old_sp = np.asarray(self.spacing)
        new_sp = old_sp * np.asarray(self.size) / np.asarray(size)
        # Keep the box: the first voxel's outer corner stays where it is.
        origin = np.asarray(self.origin) + self.direction_matrix @ ((new_sp - old_sp) / 2.0)
        return Grid(size, tuple(float(v) for v in new_sp), tuple(float(v) for v in origin), self.direction)

    def with_spacing(self, spacing_mm: float) -> "Grid":
        """A grid on the same box with (about) isotropic ``spacing_mm`` voxels.

        The voxel count per axis is ``round(extent / spacing_mm)``, so the actual spacing is
        ``extent / count`` (within half a voxel of the request) and the box is kept exactly.
        """
        extent = np.asarray(self.size) * np.asarray(self.spacing)
        return self.with_size(np.maximum(1, np.round(extent / spacing_mm)).astype(int))

    def scaled(self, factor: float) -> "Grid":
        """The same box with ``round(n * factor)`` voxels per axis (at least 1)."""
        return self.with_size(np.maximum(1, np.round(np.asarray(self.size) * factor)).astype(int))

    # -------------------------------------------------------------- points
    def physical_points(self, device: torch.device) -> torch.Tensor:
        """Physical (x, y, z) mm of every voxel centre, a (3, Z, Y, X) float32 tensor."""
        idx = _index_grid(self.shape, device)  # (3, Z, Y, X), channels (i, j, k)
        a = torch.as_tensor(self.index_to_physical, dtype=torch.float32, device=device)
        o = torch.as_tensor(self.origin, dtype=torch.float32, device=device)
        return torch.einsum("rc,czyx->rzyx", a, idx) + o[:, None, None, None]


def _index_grid(shape: Tuple[int, int, int], device: torch.device) -> torch.Tensor:
    """(3, Z, Y, X) float32 tensor of voxel indices with channels (i, j, k)."""
    z, y, x = (torch.arange(n, dtype=torch.float32, device=device) for n in shape)
    kk, jj, ii = torch.meshgrid(z, y, x, indexing="ij")
    return torch.stack((ii, jj, kk))


# ================================================================== fields: voxels <-> millimetres
def voxel_to_mm_field(u: torch.Tensor, grid: Grid) -> torch.Tensor:
    """Voxel field (1, 3, Z, Y, X), channels (dk, dj, di), to mm field (1, 3, Z, Y, X), (dx, dy, dz)."""
    a = torch.as_tensor(grid.index_to_physical, dtype=u.dtype, device=u.device)
    return torch.einsum("rc,bczyx->brzyx", a, u.flip(1))


def mm_to_voxel_field(d: torch.Tensor, grid: Grid) -> torch.Tensor:
    """Inverse of :func:`voxel_to_mm_field`."""
    inv = torch.as_tensor(np.linalg.inv(grid.index_to_physical), dtype=d.dtype, device=d.device)
    return torch.einsum("rc,bczyx->brzyx", inv, d).flip(1)


def resize_voxel_field(u: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """Move a voxel field between two grids on the same box (exact per-axis rescaling)."""
    src = u.shape[2:]
    if tuple(src) == tuple(shape):
        return u
    out = F.interpolate(u, size=tuple(shape), mode="trilinear", align_corners=False)
    scale = torch.tensor([n / m for n, m in zip(shape, src)], dtype=u.dtype, device=u.device)
    return out * scale.view(1, 3, 1, 1, 1)


def resize_volume(x: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """Trilinear resize of (1, C, Z, Y, X) data between grids on the same box.

    Halving an even axis averages voxel pairs exactly (a 2-voxel box filter).
    """
    if tuple(x.shape[2:]) == tuple(shape):
        return x
    return F.interpolate(x, size=tuple(shape), mode="trilinear", align_corners=False)


def mm_field_to_image(d: torch.Tensor, grid: Grid) -> sitk.Image:
    """mm field (1, 3, Z, Y, X) to an ITK displacement-field image (VectorFloat64) on ``grid``."""
    arr = d[0].permute(1, 2, 3, 0).detach().to("cpu", torch.float64).numpy()
    image = sitk.GetImageFromArray(np.ascontiguousarray(arr), isVector=True)
    return grid.apply_to(image)


def image_to_mm_field(image: sitk.Image, device: torch.device) -> torch.Tensor:
    """ITK displacement-field image (3 components, mm) to a (1, 3, Z, Y, X) float32 tensor."""
    if image.GetNumberOfComponentsPerPixel() != 3 or image.GetDimension() != 3:
        raise InputError("a displacement field must be a 3-D image with 3 components (x, y, z mm)")
    arr = sitk.GetArrayFromImage(image).astype(np.float32)  # (Z, Y, X, 3)
    return torch.from_numpy(arr).to(device).permute(3, 0, 1, 2)[None].contiguous()


# ================================================================== sampling
def grid_sample_index(volume: torch.Tensor, index: torch.Tensor, mode: str = "bilinear", padding: str = "border") -> torch.Tensor:
    """Sample (1, C, Z, Y, X) ``volume`` at continuous voxel indices.

    ``index`` is (3, Z', Y', X') with channels (i, j, k) of ``volume``'s grid. Trilinear
    (``mode="bilinear"``) or ``"nearest"``.
    """
    shape = volume.shape[2:]  # (Z, Y, X)
    sizes = torch.tensor([shape[2], shape[1], shape[0]], dtype=index.dtype, device=index.device)
    norm = (2.0 * index + 1.0) / sizes.view(3, 1, 1, 1) - 1.0  # align_corners=False
    grid = norm.permute(1, 2, 3, 0)[None]  # (1, Z', Y', X', 3) with (x, y, z) = (i, j, k)
    return F.grid_sample(volume, grid, mode=mode, padding_mode=padding, align_corners=False)


def warp(volume: torch.Tensor, u: torch.Tensor, mode: str = "bilinear") -> torch.Tensor:
    """``volume(p + u(p))`` for a voxel field u on the same grid (border values outside)."""
    shape = u.shape[2:]
    index = _index_grid(tuple(shape), u.device) + u[0].flip(0)
    return grid_sample_index(volume, index, mode=mode)


def _sampling_affine(fixed_grid: Grid, moving_grid: Grid) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Affine maps to grid_sample coordinates of ``moving_grid`` (align_corners=False).

    For a fixed index p = (i, j, k) and a mm displacement d at that voxel, the normalised moving
    coordinate is ``L @ p + b + K @ d``: p goes to the physical point ``x = A p + o``, then to
    the moving index ``q = M^-1 (x + d - o_m)``, then to ``(2 q + 1) / n - 1``.
    """
    scale = np.diag(2.0 / np.asarray(moving_grid.size, dtype=np.float64))
    m_inv = np.linalg.inv(moving_grid.index_to_physical)
    k = scale @ m_inv
    l = k @ fixed_grid.index_to_physical
    b = k @ (np.asarray(fixed_grid.origin) - np.asarray(moving_grid.origin)) + 1.0 / np.asarray(moving_grid.size) - 1.0
    return l, b, k


def resample_through_field(
    moving: torch.Tensor,
    moving_grid: Grid,
    fixed_grid: Grid,
    d_mm: Optional[torch.Tensor],
    mode: str = "bilinear",
    default: float = 0.0,
    chunk_slices: int = 32,
) -> torch.Tensor:
    """The moving data resampled on the fixed grid through a mm field: ``moving(x + d(x))``.

    Args:
        moving: (1, C, Z, Y, X) data on ``moving_grid``.
        d_mm: (1, 3, Z', Y', X') mm field on ``fixed_grid`` (None = identity).
        mode: ``"bilinear"`` (trilinear) or ``"nearest"`` (label maps).
        default: value of points outside the moving image (as ``sitk.Resample``'s default).
        chunk_slices: fixed-grid slices per chunk, to bound the memory of coordinate tensors.

    Returns:
        (1, C, Z', Y', X') tensor. Agrees with ``sitk.Resample(moving, fixed,
        sitk.DisplacementFieldTransform(d), interpolator, default)``: points within half a
        voxel outside the moving image take the border value, points further out ``default``.
    """
    device = moving.device
    l, b, k = (torch.as_tensor(m, dtype=torch.float32, device=device) for m in _sampling_affine(fixed_grid, moving_grid))
    Z, Y, X = fixed_grid.shape
    i = torch.arange(X, dtype=torch.float32, device=device).view(1, 1, X, 1) * l[:, 0]
    j = torch.arange(Y, dtype=torch.float32, device=device).view(1, Y, 1, 1) * l[:, 1]
    out = torch.empty((1, moving.shape[1], Z, Y, X), dtype=moving.dtype, device=device)
    for z0 in range(0, Z, chunk_slices):
        z1 = min(Z, z0 + chunk_slices)
        kk = torch.arange(z0, z1, dtype=torch.float32, device=device).view(-1, 1, 1, 1) * l[:, 2]
        coords = (kk + b) + j + i  # (z, Y, X, 3): normalised (x, y, z) of the moving grid
        if d_mm is not None:
            coords += torch.matmul(d_mm[0, :, z0:z1].permute(1, 2, 3, 0), k.t())
        sampled = F.grid_sample(moving, coords[None], mode=mode, padding_mode="border", align_corners=False)
        outside = coords.abs().amax(dim=-1) > 1.0  # beyond the moving image's box (ITK's test)
        out[:, :, z0:z1] = sampled.masked_fill_(outside, default)
    return out


# ================================================================== images <-> tensors
def image_to_tensor(image: sitk.Image, device: torch.device, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Scalar sitk image to a (1, 1, Z, Y, X) tensor."""
    arr = sitk.GetArrayFromImage(image).astype(np.float32 if dtype.is_floating_point else np.int64, copy=False)
    return torch.from_numpy(arr).to(device, dtype)[None, None]


def tensor_to_image(x: torch.Tensor, grid: Grid, pixel_type: Optional[int] = None) -> sitk.Image:
    """(1, 1, Z, Y, X) or (Z, Y, X) tensor to a scalar sitk image on ``grid``."""
    arr = x.detach().reshape(grid.shape).cpu().numpy()
    image = sitk.GetImageFromArray(arr)
    if pixel_type is not None:
        image = sitk.Cast(image, pixel_type)
    return grid.apply_to(image)


def resample_image(
    image: sitk.Image,
    grid: Grid,
    translation_mm: Optional[Sequence[float]] = None,
    interpolator: int = sitk.sitkLinear,
    default: float = 0.0,
) -> sitk.Image:
    """Resample ``image`` onto ``grid`` (SimpleITK), optionally through ``x -> x + t``.

    Returns ``image`` itself when the grids are identical and there is no translation.
    """
    if translation_mm is None and Grid.from_image(image).same_as(grid):
        return image
    offset = (0.0, 0.0, 0.0) if translation_mm is None else translation_mm
    transform = sitk.TranslationTransform(3, [float(v) for v in offset])
    return sitk.Resample(image, grid.reference_image(), transform, interpolator, float(default), image.GetPixelID())


def overlap_fraction(fixed_grid: Grid, moving: sitk.Image, translation_mm: Sequence[float]) -> float:
    """Fraction of the fixed grid's voxels whose point ``x + t`` lies inside the moving image."""
    coarse = fixed_grid.with_size(np.minimum(fixed_grid.size, 32))
    ones = sitk.Image(moving.GetSize(), sitk.sitkUInt8) + 1
    ones.CopyInformation(moving)
    inside = resample_image(ones, coarse, translation_mm, sitk.sitkNearestNeighbor, 0)
    return float(sitk.GetArrayViewFromImage(inside).mean())


def check_image(image: sitk.Image, what: str) -> None:
    """Raise :class:`InputError` unless ``image`` is a scalar 3-D image with a usable geometry."""
    if image.GetDimension() != 3:
        raise InputError(f"{what} must be a 3-D image, got {image.GetDimension()}-D")
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(f"{what} must be a scalar image, got {image.GetNumberOfComponentsPerPixel()} components per voxel")
    spacing = np.asarray(image.GetSpacing())
    if not np.all(np.isfinite(spacing)) or np.any(spacing <= 0):
        raise InputError(f"{what} has an invalid spacing {tuple(spacing)} (must be finite and > 0 mm)")
    direction = np.asarray(image.GetDirection()).reshape(3, 3)
    if not np.all(np.isfinite(direction)) or abs(abs(np.linalg.det(direction)) - 1.0) > 1e-3:
        raise InputError(f"{what} has an invalid direction matrix (not orthonormal): {tuple(direction.ravel())}")
    if not np.all(np.isfinite(image.GetOrigin())):
        raise InputError(f"{what} has a non-finite origin {image.GetOrigin()}")
