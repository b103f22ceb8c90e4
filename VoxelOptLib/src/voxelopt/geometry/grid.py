"""Voxel grids in physical space (numpy and SimpleITK only: importable without torch)."""

from __future__ import annotations

import dataclasses
from typing import Optional, Sequence, Tuple

import numpy as np
import SimpleITK as sitk


@dataclasses.dataclass(frozen=True)
class Grid:
    """A voxel grid in physical space (LPS, mm).

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

    def point(self, index: Sequence[float]) -> np.ndarray:
        """Physical point (LPS, mm) of a continuous (i, j, k) index."""
        return np.asarray(self.origin) + self.index_to_physical @ np.asarray(index, dtype=np.float64)

    def index_map_to(self, target: "Grid", alignment: Optional[np.ndarray] = None) -> Tuple[np.ndarray, np.ndarray]:
        """(M, c) with ``target_index = M @ index + c`` for continuous (i, j, k) indices of this grid
        (float64): the point of ``index`` is mapped by the 4x4 LPS mm ``alignment`` (None: the
        identity) and expressed as a continuous index of ``target``."""
        matrix = np.eye(4) if alignment is None else np.asarray(alignment, dtype=np.float64)
        to_target = np.linalg.inv(target.index_to_physical)
        linear = to_target @ matrix[:3, :3] @ self.index_to_physical
        offset = to_target @ (matrix[:3, :3] @ np.asarray(self.origin) + matrix[:3, 3] - np.asarray(target.origin))
        return linear, offset

    def center(self) -> np.ndarray:
        """Physical centre of the grid (mm)."""
        return self.point((np.asarray(self.size) - 1) / 2.0)

    def physical_points(self) -> np.ndarray:
        """Physical (x, y, z) mm of every voxel centre, a (3, Z, Y, X) float64 array."""
        k, j, i = np.meshgrid(*(np.arange(n, dtype=np.float64) for n in self.shape), indexing="ij")
        return np.einsum("rc,czyx->rzyx", self.index_to_physical, np.stack((i, j, k))) + np.reshape(self.origin, (3, 1, 1, 1))

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

    def corners(self) -> np.ndarray:
        """(8, 3) physical points (LPS, mm) of the outermost voxel centres."""
        return np.array([self.point([i, j, k]) for i in (0, self.size[0] - 1) for j in (0, self.size[1] - 1)
                         for k in (0, self.size[2] - 1)])

    def covers(self, other: "Grid", tol: float = 1e-3) -> bool:
        """Whether every voxel centre of ``other`` lies in this grid's box (within half a voxel
        of its outer voxel centres, where ITK's interpolators still take border values; ``tol``
        in voxels of this grid). The boxes are convex: their corners decide."""
        index = (other.corners() - np.asarray(self.origin)) @ np.linalg.inv(self.index_to_physical).T
        return bool(np.all(index >= -0.5 - tol) and np.all(index <= np.asarray(self.size) - 0.5 + tol))

    def holds(self, other: "Grid", tol: float = 1e-3) -> bool:
        """Whether ``other`` is a block of this grid's voxels: the same spacing and axes, its
        voxel centres on this grid's (within ``tol`` voxels) and inside it, as a label map
        cropped from its image's grid is."""
        if not (np.allclose(self.spacing, other.spacing, rtol=1e-6, atol=0.0)
                and np.allclose(self.direction, other.direction, atol=1e-6)):
            return False
        start = (np.asarray(other.origin) - np.asarray(self.origin)) @ np.linalg.inv(self.index_to_physical).T
        if not np.allclose(start, np.round(start), atol=tol):
            return False
        first = np.round(start).astype(int)
        return bool(np.all(first >= 0) and np.all(first + np.asarray(other.size) <= np.asarray(self.size)))

    # -------------------------------------------------------------- grids inside this one
    def lattice(self, first: Sequence[float], step: Sequence[float], size: Sequence[int]) -> "Grid":
        """A regular lattice of ``size`` points whose point n sits at this grid's continuous
        index ``first + n * step`` (per axis, (i, j, k) order); same direction."""
        step = np.asarray(step, dtype=np.float64)
        return Grid(
            tuple(int(n) for n in size),
            tuple(float(v) for v in np.asarray(self.spacing) * step),
            tuple(float(v) for v in self.point(first)),
            self.direction,
        )

    def crop(self, start: Sequence[int], size: Sequence[int]) -> "Grid":
        """The sub-grid of ``size`` voxels from index ``start`` (i, j, k); may extend past the
        grid (padding)."""
        return self.lattice(start, (1.0, 1.0, 1.0), size)

    # -------------------------------------------------------------- new grids on the same box
    def with_size(self, size: Sequence[int]) -> "Grid":
        """A grid on the same box with ``size`` voxels per axis (spacing = extent / size).

        Voxel n of the new grid sits at old index ``(n + 1/2) * old / new - 1/2``: the
        convention of ``F.interpolate(align_corners=False)``.
        """
        size = np.asarray([max(1, int(n)) for n in size])
        step = np.asarray(self.size) / size
        return self.lattice(0.5 * step - 0.5, step, size)

    def with_spacing(self, spacing_mm: float) -> "Grid":
        """A grid on the same box with (about) isotropic ``spacing_mm`` voxels.

        The voxel count per axis is ``round(extent / spacing_mm)``, so the actual spacing is
        ``extent / count`` (within half a voxel of the request) and the box is kept exactly.
        """
        return self.with_spacings((spacing_mm,) * 3)

    def with_spacings(self, spacing_mm: Sequence[float], multiple_of: int = 1) -> "Grid":
        """A grid on the same box with about ``spacing_mm`` (i, j, k) voxels, the voxel count
        per axis ``round(extent / spacing)`` rounded up to a multiple of ``multiple_of``."""
        extent = np.asarray(self.size) * np.asarray(self.spacing)
        count = np.maximum(1, np.round(extent / np.asarray(spacing_mm, dtype=np.float64)))
        return self.with_size((np.ceil(count / multiple_of) * multiple_of).astype(int))

    def scaled(self, factor: float) -> "Grid":
        """The same box with ``round(n * factor)`` voxels per axis (at least 1)."""
        return self.with_size(np.maximum(1, np.round(np.asarray(self.size) * factor)).astype(int))
