"""The outputs of a registration: computed on the grid where they carry information, streamed where
they must be on the full fixed grid.

* The **field** lives on the solver's *working grid* (4 mm by default; the fixed image's box),
  float32, in LPS mm, resampling direction ``warped(x) = moving(x + d(x))``: the solver's field
  plus the initial alignment, no upsampled copy. Anywhere else it is sampled with trilinear
  interpolation exactly as ITK's
  ``DisplacementFieldTransform`` does (align_corners=False on the shared box, border values
  repeated), so ``sitk.Resample(moving, fixed, sitk.DisplacementFieldTransform(field))`` gives the
  library's warped image.
* **Warped images and labels** are computed slab by slab of fixed-grid slices (on the CPU by
  the compiled kernel of :mod:`voxelopt.compiled` when numba is installed, else torch's
  ``grid_sample`` on the field's device; an image and its labels in one pass; SimpleITK for
  images with several components), so the peak memory is a few slabs plus the input and output
  arrays; the output keeps the moving image's pixel type.
* **Jacobian determinant**, SDlogJ and folding come from the field on its own grid; the
  **entropy** map stays on the working grid.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import SimpleITK as sitk
import torch
import torch.nn.functional as F

from . import compiled
from .errors import RegistrationCancelled
from .inputs import SIGNED_OF_UNSIGNED
from .io import writable_array
from .extent import nonzero_extent
from .geometry import (Grid, axis_interpolation, axis_permutation, grid_sample, image_to_mm_field, mm_field_to_image,
                       mm_to_voxel_field, resample_image, resize_volume, voxel_to_mm_field)
from .metrics import jacobian_determinant
from . import voxels

#: Fixed-grid voxels per slab of a streamed warp (bounds the coordinate tensors to ~50 MB).
SLAB_VOXELS = 4 * 1024 * 1024
#: Fixed-grid voxels per tile of a slab sampled at once: the block of moving voxels a tile reads
#: (converted to float32) grows with the tile's extent, as a rotation spreads it across slices.
TILE_VOXELS = 1024 * 1024

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
        if np.allclose(initial[:3, :3], np.eye(3)):  # a translation: d = u + t
            t = torch.as_tensor(initial[:3, 3], dtype=u.dtype, device=u.device).view(1, 3, 1, 1, 1)
            return cls((u + t).contiguous(), field_grid)
        # d = A u + (A - I) x + t, with x = M p + o at voxel index p = (i, j, k): the part without u
        # is affine in p, added per axis (float64 rows) instead of from a (3, Z, Y, X) array of points
        a = initial[:3, :3] - np.eye(3)
        per_index = a @ field_grid.index_to_physical  # (A - I) M
        constant = a @ np.asarray(field_grid.origin) + initial[:3, 3]
        d = torch.einsum("rc,bczyx->brzyx", torch.as_tensor(initial[:3, :3], dtype=u.dtype, device=u.device), u)
        k, j, i = (torch.arange(n, dtype=torch.float64, device=u.device) for n in field_grid.shape)
        for r in range(3):
            d[0, r].add_((float(per_index[r, 2]) * k + float(constant[r])).to(u.dtype).view(-1, 1, 1))
            d[0, r].add_((float(per_index[r, 1]) * j).to(u.dtype).view(1, -1, 1))
            d[0, r].add_((float(per_index[r, 0]) * i).to(u.dtype).view(1, 1, -1))
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

    Sampled exactly as ``sitk.Resample(moving, fixed, sitk.DisplacementFieldTransform(field))``
    does (to float32 rounding, see :func:`warp_images`, which warps several images of one grid in
    one pass).

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
    return warp_images([moving], field, fixed_grid, [nearest], [default], progress, cancel)[0]


def warp_images(
    movings: Sequence[sitk.Image],
    field: GridField,
    fixed_grid: Grid,
    nearest: Sequence[bool],
    defaults: Optional[Sequence[Optional[float]]] = None,
    progress: Optional[ProgressCallback] = None,
    cancel: Optional[CancelCallback] = None,
) -> List[sitk.Image]:
    """:func:`warp_image` of several images on one moving grid (e.g. a CT and its labels) in
    one pass: the field and the moving coordinates of each slab are computed once for all.

    Scalar images are warped slab by slab (:func:`warp_images_streamed`): on the CPU by the
    compiled kernel of :mod:`voxelopt.compiled` when numba is installed and the fixed grid is
    large enough to pay for loading it (an int16 512x512x600 CT in 1.7-2.2 s on 2 cores), otherwise
    with torch on the field's device (4.4-4.9 s for that CT); images with several components by
    SimpleITK (:func:`warp_image_itk`). Per slab of fixed-grid slices: the field at the slab's
    voxels, the moving indices ``q = M^-1 (x + d(x) - origin)``, then for each image the voxels
    the slab needs, read once.

    The kernel computes in float64 like SimpleITK, torch the sample points in float32: the
    values agree to rounding (int16 CT at 512x512x600: 2229 of 157 M voxels off by the 1 HU of
    rounding with the kernel; with torch 11352, and 11 by more, where a point within ~1e-4 voxel
    of a decision boundary (nearest neighbour's half-way point, the image's half-voxel border)
    falls on the other side; ``Testing/test_pipeline.py`` compares them).
    """
    if not movings:
        return []
    defaults = list(defaults) if defaults is not None else [None] * len(movings)
    if all(m.GetNumberOfComponentsPerPixel() == 1 for m in movings):
        return warp_images_streamed(movings, field, fixed_grid, nearest, defaults, progress, cancel)
    out = []
    for number, (moving, near, default) in enumerate(zip(movings, nearest, defaults)):
        part = None if progress is None else (lambda f, n=number: progress((n + f) / len(movings)))
        out.append(warp_image_itk(moving, field, fixed_grid, near, default, part, cancel))
    return out


#: The samplers of :func:`warp_images_streamed`.
SAMPLERS = ("auto", "torch", "compiled")


def warp_images_streamed(movings: Sequence[sitk.Image], field: GridField, fixed_grid: Grid, nearest: Sequence[bool],
                         defaults: Sequence[Optional[float]], progress: Optional[ProgressCallback],
                         cancel: Optional[CancelCallback], sampler: str = "auto") -> List[sitk.Image]:
    """:func:`warp_images` of scalar images, slab by slab of fixed-grid slices, straight into the
    output images' voxels (:func:`writable_array`), in the moving pixel type. Label maps alone
    (nearest, 0 outside) are sampled only in the box they can reach (:func:`labelled_region`);
    the rest of a new image is 0 already.

    ``sampler``: ``"compiled"``, the compiled CPU kernel (:class:`_CompiledSlabs`; RuntimeError
    without numba); ``"torch"``, torch on the field's device, the CPU or CUDA
    (:class:`_TorchSlabs`); ``"auto"``, the kernel on the CPU when :func:`compiled.worth_it` for
    the fixed grid's voxel count. The kernel needs the field's grid to have the fixed grid's
    axes (every field of a registration does) and the field on the CPU; otherwise torch samples.
    """
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; choose from {SAMPLERS}")
    moving_grid = Grid.from_image(movings[0])
    if any(not Grid.from_image(m).same_as(moving_grid) for m in movings[1:]):
        raise ValueError("warp_images needs images on one grid")
    arrays = [voxels.view(m) for m in movings]
    defaults = [float(value) if value is not None else (0.0 if near else float(array.min()))
                for value, near, array in zip(defaults, nearest, arrays)]
    # new images are zero-filled: what a label box leaves out stays 0
    images = [fixed_grid.apply_to(sitk.Image(list(fixed_grid.size), m.GetPixelID())) for m in movings]
    box = tuple(slice(0, n) for n in fixed_grid.shape)
    if all(nearest) and not any(defaults):  # label maps: 0 wherever the field cannot reach a label
        boxes = [labelled_region(array, moving_grid, field, fixed_grid) for array in arrays]
        boxes = [b for b in boxes if b is not None]
        if not boxes:
            return images
        box = tuple(slice(min(b[axis].start for b in boxes), max(b[axis].stop for b in boxes)) for axis in range(3))
    outs = [writable_array(image) for image in images]
    where = None
    # "auto" weighs the kernel's loading against the whole fixed grid, not a label box: the
    # image of a registration is warped onto the whole grid in the same process
    if field.data.device.type == "cpu" and (sampler == "compiled" or (
            sampler == "auto" and compiled.worth_it(math.prod(fixed_grid.shape)))):
        where = _compiled_field_map(field, fixed_grid, moving_grid)
    slabs = (_CompiledSlabs(where, arrays, outs, defaults, nearest) if where is not None
             else _TorchSlabs(field, fixed_grid, moving_grid, arrays, outs, defaults, nearest))
    (bz, by, bx) = box
    slab = max(1, SLAB_VOXELS // ((by.stop - by.start) * (bx.stop - bx.start)))
    for z0 in range(bz.start, bz.stop, slab):
        if cancel is not None and cancel():
            raise RegistrationCancelled("registration cancelled")
        z1 = min(bz.stop, z0 + slab)
        slabs.warp(slice(z0, z1), by, bx)
        if progress is not None:
            progress((z1 - bz.start) / (bz.stop - bz.start))
    return images


class _CompiledSlabs:
    """Each image's slab by :func:`compiled.warp_slab`: field, moving index and sample point by
    point, the moving voxels read in their own type, no intermediate arrays."""

    def __init__(self, where: compiled.FieldMap, arrays: Sequence[np.ndarray], outs: Sequence[np.ndarray],
                 defaults: Sequence[float], nearest: Sequence[bool]) -> None:
        self.where, self.images = where, list(zip(arrays, outs, defaults, nearest))

    def warp(self, zs: slice, ys: slice, xs: slice) -> None:
        for array, out, default, near in self.images:
            compiled.warp_slab(array, self.where, (zs.start, ys.start, xs.start), out[zs, ys, xs], default, near)


class _TorchSlabs:
    """Each slab with torch on the field's device: the moving continuous indices ``q`` of its
    voxels (float32, planar (3, z, y, x), :func:`_moving_index_sampler`); per tile of its rows,
    nearest-neighbour images are read at the rounded indices (a gather in their own pixel type,
    :func:`_nearest_values`); for trilinear ones the block of moving voxels the tile reads is
    converted to float32 into one reused buffer and sampled by ``grid_sample`` at ``q``
    normalised to the block. Values are written straight into the outputs in their type."""

    def __init__(self, field: GridField, fixed_grid: Grid, moving_grid: Grid, arrays: Sequence[np.ndarray],
                 outs: Sequence[np.ndarray], defaults: Sequence[float], nearest: Sequence[bool]) -> None:
        device = field.data.device
        self.moving_indices = _moving_index_sampler(field, fixed_grid, moving_grid)
        with warnings.catch_warnings():  # read-only views of the image buffers: never written to
            warnings.simplefilter("ignore", UserWarning)
            sources = [torch.from_numpy(_torch_compatible(array)).to(device) for array in arrays]
        # per image (source, output array, default) as they are read and written: nearest-neighbour
        # images of unsigned 16-64-bit types through the signed type of the same bits
        self.passes = [_same_bits_signed(*item) if near else item
                       for item, near in zip(zip(sources, outs, defaults), nearest)]
        self.nearest = list(nearest)
        self.moving_size = np.asarray(moving_grid.size, dtype=np.float64)
        self.scratch = _BlockBuffer(device)

    def warp(self, zs: slice, ys: slice, xs: slice) -> None:
        q = self.moving_indices(zs.start, zs.stop, ys, xs)  # (3, z, y, x) in the box: channels i, j, k
        rows = max(1, TILE_VOXELS // (q.shape[1] * q.shape[3]))
        for y0 in range(0, q.shape[2], rows):  # tiles of rows: a smaller block of moving voxels each
            tile = q[:, :, y0:y0 + rows]
            target = (zs, slice(ys.start + y0, ys.start + y0 + tile.shape[2]), xs)
            bounds = [tuple(float(v) for v in torch.aminmax(tile[c])) for c in range(3)]  # (min, max) of i, j, k
            inside = _inside(tile, bounds, self.moving_size)
            for (source, out, default), near in zip(self.passes, self.nearest):
                if near:  # before the trilinear images' normalisation changes ``tile``
                    _store(_outside_filled(_nearest_values(source, tile), inside, default), out[target])
            if not all(self.nearest):
                block, points = _normalised_block_points(tile, bounds, self.moving_size)
                for (source, out, default), near in zip(self.passes, self.nearest):
                    if not near:
                        _store(_outside_filled(_sample_block(self.scratch.block(source, block), points), inside, default),
                               out[target])


def _moving_index_sampler(field: GridField, fixed_grid: Grid, moving_grid: Grid) -> Callable[[int, int, slice, slice], torch.Tensor]:
    """A function ``(z0, z1, rows, cols) -> (3, z1 - z0, y, x)`` float32: the moving continuous
    indices (channels i, j, k) of the fixed-grid voxels of slices z0..z1-1 in the rows and
    columns given (slices of the Y and X axes), ``q = M^-1 (x + d(x) - origin)``, with the field
    sampled as ITK's ``DisplacementFieldTransform`` does (:func:`_field_sampler`)."""
    device = field.data.device
    to_moving, moving_offset = fixed_grid.index_map_to(moving_grid)
    field_on_slab = _field_sampler(_in_moving_indices(field, moving_grid), fixed_grid)  # q = to_moving @ p + offset + e(p)
    Z, Y, X = fixed_grid.shape
    i_axis, j_axis = (torch.arange(n, dtype=torch.float64, device=device) for n in (X, Y))

    def sample(z0: int, z1: int, rows: slice, cols: slice) -> torch.Tensor:
        k = torch.arange(z0, z1, dtype=torch.float64, device=device)
        q = field_on_slab(z0, z1, rows, cols)  # contiguous planes
        for c in range(3):  # + to_moving @ (i, j, k) + offset, as two broadcast additions per plane
            kj = k.view(-1, 1, 1) * to_moving[c, 2] + j_axis[rows].view(1, -1, 1) * to_moving[c, 1] + moving_offset[c]
            q[c].add_(kj.to(q.dtype)).add_((i_axis[cols] * to_moving[c, 0]).to(q.dtype).view(1, 1, -1))
        return q

    return sample


def _in_moving_indices(field: GridField, moving_grid: Grid) -> GridField:
    """The field (LPS mm) as displacements in the moving grid's continuous-index units (channels
    i, j, k), on the field's own grid, in its dtype and on its device."""
    d_to_moving = torch.as_tensor(np.linalg.inv(moving_grid.index_to_physical), dtype=field.data.dtype,
                                  device=field.data.device)
    return GridField(torch.einsum("rc,bczyx->brzyx", d_to_moving, field.data), field.grid)


def _compiled_field_map(field: GridField, fixed_grid: Grid, moving_grid: Grid) -> Optional[compiled.FieldMap]:
    """The map of :func:`_moving_index_sampler` for :func:`compiled.warp_slab`, when the field's
    grid has the fixed grid's axes, in their order (the solver's fields always do); None
    otherwise. Per fixed axis, the field index ``to_field[a, a] * index + offset[a]`` clamped to
    the field's grid (:func:`axis_interpolation`: border values, as in ITK's
    ``DisplacementFieldTransform`` and :func:`_field_sampler`)."""
    to_field, field_offset = fixed_grid.index_map_to(field.grid)
    field_axis = axis_permutation(to_field)
    if field_axis is None or field_axis.tolist() != [0, 1, 2]:
        return None
    to_moving, moving_offset = fixed_grid.index_map_to(moving_grid)
    e_field = _in_moving_indices(field, moving_grid).data[0]  # (3, fz, fy, fx)
    field_shape = field.data.shape[-3:][::-1]  # (fx, fy, fz)
    axes = [axis_interpolation(n, to_field[a, a], field_offset[a], field_shape[a]) for a, n in enumerate(fixed_grid.size)]
    return compiled.FieldMap(np.ascontiguousarray(e_field.cpu().numpy(), dtype=np.float32), axes[0], axes[1], axes[2],
                             np.ascontiguousarray(to_moving, dtype=np.float64),
                             np.ascontiguousarray(moving_offset, dtype=np.float64))


class _BlockBuffer:
    """One float32 buffer, grown as needed, that holds each slab's block of moving voxels: the
    conversion writes into memory already mapped (a fresh array per slab cost more in page
    faults than the conversion itself)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.data = torch.empty(0, dtype=torch.float32, device=device)

    def block(self, source: torch.Tensor, block_range) -> torch.Tensor:
        """``source`` (Z, Y, X) inside ((k0, k1), (j0, j1), (i0, i1)) (inclusive), as a contiguous
        float32 (1, 1, z, y, x) tensor."""
        (k0, k1), (j0, j1), (i0, i1) = block_range
        part = source[k0:k1 + 1, j0:j1 + 1, i0:i1 + 1]
        if part.dtype == torch.float32 and part.is_contiguous():
            return part[None, None]
        if self.data.numel() < part.numel():  # grown by a quarter more, so that it is rarely grown again
            self.data = torch.empty(0, dtype=torch.float32, device=self.device)
            self.data = torch.empty(part.numel() * 5 // 4, dtype=torch.float32, device=self.device)
        return self.data[:part.numel()].view(part.shape).copy_(part)[None, None]


def warp_image_itk(moving: sitk.Image, field: GridField, fixed_grid: Grid, nearest: bool, default: Optional[float],
                   progress: Optional[ProgressCallback], cancel: Optional[CancelCallback]) -> sitk.Image:
    """:func:`warp_image` with SimpleITK: each slab of fixed-grid slices is resampled through the
    field's ``DisplacementFieldTransform`` (float32 for trilinear, then rounded and clipped like
    :func:`warp_images_streamed`); the reference the streamed samplers are tested against, and
    the path of images with several components."""
    array = voxels.view(moving)
    if default is None:
        default = 0.0 if nearest else float(array.min())
    transform = sitk.DisplacementFieldTransform(mm_field_to_image(field.data, field.grid))  # ITK takes 64-bit vectors
    Z, Y, X = fixed_grid.shape
    box = (slice(0, Z), slice(0, Y), slice(0, X))
    vector = moving.GetNumberOfComponentsPerPixel() > 1
    if nearest and default == 0 and not vector:  # labels: 0 wherever the field cannot reach a labelled voxel
        box = labelled_region(array, Grid.from_image(moving), field, fixed_grid)
        if box is None:
            return fixed_grid.apply_to(sitk.GetImageFromArray(np.zeros(fixed_grid.shape, dtype=array.dtype)))
    out = np.zeros(fixed_grid.shape + array.shape[3:], dtype=array.dtype)  # (Z, Y, X[, components])
    (bz, by, bx) = box
    slab = max(1, SLAB_VOXELS // ((by.stop - by.start) * (bx.stop - bx.start)))
    pixel = moving.GetPixelID() if nearest else (sitk.sitkVectorFloat32 if vector else sitk.sitkFloat32)
    interpolator = sitk.sitkNearestNeighbor if nearest else sitk.sitkLinear
    for z0 in range(bz.start, bz.stop, slab):
        if cancel is not None and cancel():
            raise RegistrationCancelled("registration cancelled")
        z1 = min(bz.stop, z0 + slab)
        reference = sitk.Image([bx.stop - bx.start, by.stop - by.start, z1 - z0], sitk.sitkUInt8)
        reference.SetSpacing(fixed_grid.spacing)
        reference.SetDirection(fixed_grid.direction)
        reference.SetOrigin(tuple(fixed_grid.point([bx.start, by.start, z0])))
        resampled = sitk.Resample(moving, reference, transform, interpolator, float(default), pixel)
        out[z0:z1, by, bx] = _to_dtype(voxels.view(resampled), out.dtype)  # the view needs ``resampled``
        if progress is not None:
            progress((z1 - bz.start) / (bz.stop - bz.start))
    return fixed_grid.apply_to(sitk.GetImageFromArray(out, isVector=vector))


def labelled_region(labels: np.ndarray, moving_grid: Grid, field: GridField,
                    fixed_grid: Grid) -> Optional[Tuple[slice, slice, slice]]:
    """The (z, y, x) slices of the fixed-grid box outside which a label map warped through
    ``field`` (nearest neighbour, 0 outside) is 0; None when ``labels`` has no nonzero voxel.

    Exact, not a guess: between the field's voxel centres ITK interpolates the field trilinearly,
    so ``x + d(x)`` is the same convex combination of the cell corners' ``p + d(p)``; a cell can
    reach a labelled voxel only when the box of its corners' images meets the labels' box
    (grown by half a voxel, nearest neighbour's reach). The cells that can, grown by one fixed
    voxel, and out to the grid's edge where they touch the field grid's border (outside the
    field's voxel centres ITK holds the border value), give the box.
    """
    everywhere = tuple(slice(0, n) for n in fixed_grid.shape)
    to_fixed, offset = field.grid.index_map_to(fixed_grid)
    if not np.allclose(to_fixed, np.diag(np.diag(to_fixed)), atol=1e-9):
        return everywhere  # a field grid turned against the fixed one (not made by a registration)
    reach = _label_reach(labels)
    if reach is None:
        return None
    low, high = reach
    shape = field.grid.shape  # (Z, Y, X)
    if min(shape) < 2:
        return everywhere
    # per moving axis r, the moving continuous index of each field voxel centre p moved by the
    # field d (LPS mm): q_r = (to_moving @ p + offset)_r + (mm_to_moving @ d)_r, one axis at a time
    # (three float64 maps of the field grid's size at most); a cell cannot reach the labels when
    # along some axis all its 8 corners lie below ``low`` or all above ``high``
    to_moving, moving_offset = field.grid.index_map_to(moving_grid)
    mm_to_moving = np.linalg.inv(moving_grid.index_to_physical)
    d = field.data[0].detach().cpu().numpy()  # (3, Z, Y, X)
    k, j, i = (np.arange(n, dtype=np.float64).reshape([-1 if a == axis else 1 for a in range(3)])
               for axis, n in enumerate(shape))
    blocked = np.zeros([n - 1 for n in shape], dtype=bool)
    for r in range(3):
        q = to_moving[r, 0] * i + to_moving[r, 1] * j + to_moving[r, 2] * k + moving_offset[r]
        q = q + sum(float(mm_to_moving[r, c]) * d[c].astype(np.float64) for c in range(3))
        blocked |= _every_corner(q < low[r])
        blocked |= _every_corner(q > high[r])
    cells = nonzero_extent(~blocked)  # over the (Z-1, Y-1, X-1) cells
    if cells is None:
        return None
    # the field-index box of those cells, (i, j, k) order, and its corners in fixed indices
    start = cells[0][::-1].astype(np.float64)
    stop = cells[1][::-1].astype(np.float64) + 1.0
    in_fixed = _box_corners(start, stop) @ to_fixed.T + offset
    first_fixed = np.floor(in_fixed.min(axis=0)) - 1
    last_fixed = np.ceil(in_fixed.max(axis=0)) + 1
    field_size = np.asarray(field.grid.size)
    out = []
    for axis in range(3):  # (i, j, k)
        n = fixed_grid.size[axis]
        begin = 0 if start[axis] <= 0 else int(max(0, first_fixed[axis]))
        end = n if stop[axis] >= field_size[axis] - 1 else int(min(n, last_fixed[axis] + 1))
        out.append(slice(begin, max(begin + 1, end)))
    return out[2], out[1], out[0]


#: The samplers of :func:`aligned_labels`.
ALIGNED_SAMPLERS = ("auto", "itk", "compiled")


def aligned_labels(labels: sitk.Image, alignment: np.ndarray, fixed_grid: Grid, sampler: str = "auto") -> np.ndarray:
    """The (Z, Y, X) array of a label map on ``fixed_grid`` through a linear ``alignment`` (4x4,
    fixed -> moving points, LPS mm): ``sitk.Resample`` with nearest neighbour and 0 outside,
    computed only inside the box of fixed voxels whose points can land on a labelled voxel
    (:func:`aligned_region`); the zeros outside it are never written (memory the system gives
    on first write).

    ``sampler``: ``"itk"``, SimpleITK's resampling of the box; ``"compiled"``, the warp kernel
    with no displacement (ITK's rules, written straight into the box: 0.36-0.59 -> 0.21-0.41
    CPU seconds at 512x512x600), RuntimeError without numba; ``"auto"``, the kernel where
    :func:`compiled.worth_it` for the fixed grid.
    """
    if sampler not in ALIGNED_SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; choose from {ALIGNED_SAMPLERS}")
    array = voxels.view(labels)
    moving_grid = Grid.from_image(labels)
    region = aligned_region(array, moving_grid, alignment, fixed_grid)
    out = np.zeros(fixed_grid.shape, dtype=array.dtype)
    if region is None:
        return out
    (bz, by, bx) = region
    if sampler == "compiled" or (sampler == "auto" and compiled.worth_it(math.prod(fixed_grid.shape))):
        where = compiled.FieldMap.linear(fixed_grid.size, *fixed_grid.index_map_to(moving_grid, alignment))
        compiled.warp_slab(array, where, (bz.start, by.start, bx.start), out[region], 0.0, nearest=True)
        return out
    part = fixed_grid.crop((bx.start, by.start, bz.start), (bx.stop - bx.start, by.stop - by.start, bz.stop - bz.start))
    resampled = resample_image(labels, part, alignment, sitk.sitkNearestNeighbor, 0)
    out[region] = voxels.view(resampled)  # the view needs ``resampled`` alive
    return out


def aligned_region(labels: np.ndarray, moving_grid: Grid, alignment: np.ndarray,
                   fixed_grid: Grid) -> Optional[Tuple[slice, slice, slice]]:
    """The (z, y, x) slices of the fixed grid outside which ``labels`` (on ``moving_grid``) seen
    through the linear ``alignment`` are 0 (nearest neighbour); None when no voxel is labelled.

    Exact and conservative: the fixed points that land within half a voxel of the labels' box
    form a parallelepiped, the image of the box's corners under the inverse map; its bounding
    box, grown by one voxel, is kept.
    """
    reach = _label_reach(labels)
    if reach is None:
        return None
    to_moving, offset = fixed_grid.index_map_to(moving_grid, alignment)  # moving index = to_moving @ p + offset
    in_fixed = np.linalg.solve(to_moving, (_box_corners(*reach) - offset).T).T
    first = np.maximum(np.floor(in_fixed.min(axis=0)) - 1, 0).astype(int)
    last = np.minimum(np.ceil(in_fixed.max(axis=0)) + 1, np.asarray(fixed_grid.size) - 1).astype(int)
    if np.any(last < first):
        return None
    return tuple(slice(int(first[axis]), int(last[axis]) + 1) for axis in (2, 1, 0))


def _label_reach(labels: np.ndarray) -> Optional[Tuple[np.ndarray, np.ndarray]]:
    """(low, high): the moving continuous indices (i, j, k) between which a nearest-neighbour
    sample can read a labelled voxel of ``labels`` (Z, Y, X): the labels' box grown by half a
    voxel (and a margin for rounding); None when no voxel is labelled."""
    extent = nonzero_extent(labels)
    if extent is None:
        return None
    return extent[0][::-1] - 0.5 - 1e-3, extent[1][::-1] + 0.5 + 1e-3


def _every_corner(flags: np.ndarray) -> np.ndarray:
    """Per cell of a (Z, Y, X) grid of flags, (Z-1, Y-1, X-1): whether all its 8 corners are set."""
    for axis in range(3):
        lower, upper = [slice(None)] * 3, [slice(None)] * 3
        lower[axis], upper[axis] = slice(None, -1), slice(1, None)
        flags = flags[tuple(lower)] & flags[tuple(upper)]
    return flags


def _box_corners(low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """The 8 corners (8, 3) of the box between ``low`` and ``high`` (per axis)."""
    return np.array([[(low, high)[bit >> axis & 1][axis] for axis in range(3)] for bit in range(8)])


def _field_sampler(field: GridField, fixed_grid: Grid) -> Callable[[int, int, slice, slice], torch.Tensor]:
    """A function ``(z0, z1, rows, cols) -> (3, z1 - z0, y, x)``: the field (mm) at the fixed-grid
    voxels of slices z0..z1-1 in the rows and columns given (slices of Y and X), trilinear with
    border values (ITK's ``DisplacementFieldTransform`` interpolation)."""
    to_field, field_offset = fixed_grid.index_map_to(field.grid)
    scale = np.asarray(field.grid.size, dtype=np.float64) / np.asarray(fixed_grid.size)
    data = field.data[0]  # (3, z, y, x)
    Z, Y, X = fixed_grid.shape
    if np.allclose(to_field, np.diag(scale), atol=1e-6) and np.allclose(field_offset, 0.5 * scale - 0.5, atol=1e-4):
        # The field's grid is the fixed box at another resolution: field index = (fixed index +
        # 1/2) * n_field / n_fixed - 1/2 per axis, which is F.interpolate's align_corners=False
        # rule (indices clamped to the grid = border values). Each field slice is interpolated
        # in-plane once, when a slab first needs it (a slab of fixed slices falls between a few
        # field slices: at 1 mm from a 4 mm field, a quarter of the in-plane work of
        # interpolating every fixed slice), then each fixed slice between its two field slices.
        z_low, z_high, z_weight = axis_interpolation(Z, scale[2], 0.5 * scale[2] - 0.5, data.shape[1])
        in_plane: Dict[int, torch.Tensor] = {}  # field slice -> (3, Y, X), the slices of the last slab

        def separable(z0: int, z1: int, rows: slice, cols: slice) -> torch.Tensor:
            low, high, weight = z_low[z0:z1], z_high[z0:z1], z_weight[z0:z1]
            needed = range(int(low.min()), int(high.max()) + 1)
            for k in [k for k in in_plane if k not in needed]:
                del in_plane[k]
            missing = [k for k in needed if k not in in_plane]
            if missing:
                planes = data[:, missing]  # (3, m, y, x)
                if planes.shape[-2:] != (Y, X):
                    flat = planes.reshape(1, -1, *planes.shape[-2:])
                    planes = F.interpolate(flat, size=(Y, X), mode="bilinear", align_corners=False).view(3, -1, Y, X)
                in_plane.update({k: planes[:, n] for n, k in enumerate(missing)})
            out = torch.empty((3, z1 - z0, rows.stop - rows.start, cols.stop - cols.start), dtype=data.dtype, device=data.device)
            for n, (k0, k1, w) in enumerate(zip(low.tolist(), high.tolist(), weight.tolist())):
                torch.lerp(in_plane[k0][:, rows, cols], in_plane[k1][:, rows, cols], w, out=out[:, n])
            return out

        return separable

    device = data.device
    t = lambda m: torch.as_tensor(np.asarray(m, dtype=np.float64), dtype=torch.float32, device=device)  # noqa: E731
    field_norm = t(2.0 * to_field / np.asarray(field.grid.size)[:, None])
    field_norm_offset = t((2.0 * field_offset + 1.0) / np.asarray(field.grid.size) - 1.0)
    i_terms = torch.arange(X, dtype=torch.float32, device=device).view(1, 1, X, 1)
    j_terms = torch.arange(Y, dtype=torch.float32, device=device).view(1, Y, 1, 1)

    def general(z0: int, z1: int, rows: slice, cols: slice) -> torch.Tensor:
        k_terms = torch.arange(z0, z1, dtype=torch.float32, device=device).view(-1, 1, 1, 1)
        points = (k_terms * field_norm[:, 2] + field_norm_offset) + j_terms[:, rows] * field_norm[:, 1] + i_terms[:, :, cols] * field_norm[:, 0]
        return grid_sample(field.data, points[None], mode="bilinear", padding_mode="border")[0]

    return general


def _inside(q: torch.Tensor, bounds: Sequence[Tuple[float, float]], size: np.ndarray) -> Optional[torch.Tensor]:
    """Where moving indices ``q`` (3, z, y, x; channels i, j, k; ``bounds`` their (min, max) per
    channel) lie inside the image: within half a voxel of it (ITK's rule), (z, y, x) bool; None
    when every point is. Only the sides some point lies beyond are tested."""
    sides = []
    for c, (low, high) in enumerate(bounds):
        if low < -0.5:
            sides.append(q[c] >= -0.5)
        if high > size[c] - 0.5:
            sides.append(q[c] <= size[c] - 0.5)
    if not sides:
        return None
    for side in sides[1:]:
        sides[0].logical_and_(side)
    return sides[0]


def _normalised_block_points(q: torch.Tensor, bounds: Sequence[Tuple[float, float]], size: np.ndarray):
    """The block of the moving image that moving indices ``q`` (3, z, y, x; channels i, j, k;
    ``bounds`` their (min, max) per channel) read, and ``q`` normalised to it *in place* for
    ``grid_sample`` (align_corners=False).

    Returns ``(block, points)``: ``block`` as ((k0, k1), (j0, j1), (i0, i1)) inclusive index
    ranges, ``points`` (1, z, y, x, 3) (a view of ``q``'s planes). Points between the border
    voxel centre and half a voxel out take the border value (``padding_mode="border"``); points
    further out are the caller's (see :func:`_inside`).
    """
    low, high = [], []
    for c, (q_min, q_max) in enumerate(bounds):
        low.append(int(min(max(np.floor(q_min), 0), size[c] - 1)))
        high.append(int(min(max(np.floor(q_max) + 1, 0), size[c] - 1)))
    for c in range(3):
        n = high[c] - low[c] + 1
        # normalised coordinate of index v in a block of n voxels from ``low``: (2 (v - low) + 1) / n - 1
        q[c].mul_(2.0 / n).add_((1.0 - 2.0 * low[c]) / n - 1.0)
    block = tuple((low[c], high[c]) for c in (2, 1, 0))
    return block, q.permute(1, 2, 3, 0)[None]


def _sample_block(block: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """Trilinear samples of ``block`` (1, 1, z, y, x) float32 at the block points of
    :func:`_normalised_block_points`. Returns (z', y', x') float32."""
    return grid_sample(block, points, mode="bilinear", padding_mode="border")[0, 0]


def _nearest_values(source: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """``source`` (Z, Y, X) at the voxels nearest to moving indices ``q`` (3, z, y, x; channels
    i, j, k), in ``source``'s dtype: ITK's nearest neighbour (halves rounded up), indices
    clamped to the image, so that points within half a voxel outside take the border voxel.
    ``q`` is not changed."""
    Z, Y, X = source.shape
    index_dtype = torch.int32 if source.numel() < 2**31 else torch.int64
    flat = q[2].add(0.5).floor_().clamp_(0, Z - 1).to(index_dtype).mul_(Y * X)
    flat.add_(q[1].add(0.5).floor_().clamp_(0, Y - 1).to(index_dtype).mul_(X))
    flat.add_(q[0].add(0.5).floor_().clamp_(0, X - 1).to(index_dtype))
    return torch.index_select(source.reshape(-1), 0, flat.reshape(-1)).view(flat.shape)


def _same_bits_signed(source: torch.Tensor, target: np.ndarray, default: float):
    """``(source, target, default)`` of a nearest-neighbour warp, with unsigned 16-64-bit voxels
    (which few torch operations accept) reinterpreted as the signed type of the same width: a
    gather and a fill only copy bits. Other types are returned as they are."""
    signed = _SIGNED_OF.get(target.dtype)
    if signed is None or source.dtype != _UNSIGNED[target.dtype]:  # not unsigned, or widened (torch < 2.3)
        return source, target, default
    bits = np.array(default).astype(target.dtype).view(signed).item()
    return source.view(_TORCH_DTYPES[np.dtype(signed)]), target.view(signed), bits


def _outside_filled(values: torch.Tensor, inside: Optional[torch.Tensor], default: float) -> torch.Tensor:
    """``values`` with ``default`` where ``inside`` (see :func:`_inside`) is False."""
    if inside is not None:
        values.masked_fill_(~inside, default)
    return values


#: Output pixel types torch writes directly (others go through numpy).
_TORCH_DTYPES = {np.dtype(t): getattr(torch, n) for t, n in (("int8", "int8"), ("uint8", "uint8"), ("int16", "int16"),
                                                            ("int32", "int32"), ("int64", "int64"),
                                                            ("float32", "float32"), ("float64", "float64"))}
#: Unsigned types of this torch (2.3 and later) that most of its operations do not accept, and the
#: signed type of the same width that stands in for them where only bits are copied.
_UNSIGNED = {np.dtype(t): getattr(torch, t) for t in ("uint16", "uint32", "uint64") if hasattr(torch, t)}
_SIGNED_OF = {u: i for u, i in SIGNED_OF_UNSIGNED.items() if u in _UNSIGNED}


def _store(values: torch.Tensor, target: np.ndarray) -> None:
    """Write sampled ``values`` into the numpy view ``target`` in its pixel type: floating-point
    values into an integer type rounded (half to even) and clipped to its range."""
    if np.issubdtype(target.dtype, np.integer) and values.is_floating_point():
        info = np.iinfo(target.dtype)
        values = values.round_().clamp_(float(info.min), float(info.max))
    if values.device.type == "cpu" and target.dtype in _TORCH_DTYPES:
        torch.from_numpy(target).copy_(values)
    else:
        target[...] = values.cpu().numpy().astype(target.dtype)


def _to_dtype(values: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Sampled values in the output type: rounded and clipped to an integer type's range."""
    if np.issubdtype(dtype, np.integer) and not np.issubdtype(values.dtype, np.integer):
        info = np.iinfo(dtype)
        values = np.clip(np.rint(values), info.min, info.max)
    return values.astype(dtype, copy=False)


def _torch_compatible(array: np.ndarray) -> np.ndarray:
    """The voxels in a dtype torch holds: unsigned 16/32/64-bit become wider signed types where
    this torch has no such tensors (before 2.3)."""
    if array.dtype in (np.uint16, np.uint32, np.uint64):
        try:
            torch.from_numpy(array[:0])
            return array
        except TypeError:
            return array.astype(np.int32 if array.dtype == np.uint16 else np.int64)
    return np.ascontiguousarray(array)


def resample_map(image: sitk.Image, grid: Grid, vector: bool = False) -> sitk.Image:
    """A map (entropy, Jacobian) or field on another grid of the same box: trilinear, float32."""
    pixel = sitk.sitkVectorFloat32 if vector else sitk.sitkFloat32
    return sitk.Resample(image, grid.reference_image(), sitk.Transform(), sitk.sitkLinear, 0.0, pixel)
