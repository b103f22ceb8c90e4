"""Cost masks on the working grid: where each image was scanned, and the user's masks.

A mask weighs every voxel of the working grid in [0, 1]: 1 = the voxel's features take part in
the solver's cost, 0 = they carry no information there (see :mod:`voxelopt.solver.cost`). Two
sources are multiplied:

* the *scanned region* of the image (``RegistrationConfig.padding_mask``): inside the image's
  grid and outside its *padding slabs*, i.e. runs of whole planes (along any axis) from the grid
  border inward that each hold one value only, the value of the border plane: the constant a
  thin scan is padded with to fill a taller grid (typically -1024 HU; it need not be the
  image's minimum: scanners store air noise below it, or -3024 outside the reconstruction
  circle). Where the circle crosses the padding, the border plane holds two values below the HU
  window, which the features do not tell apart: planes holding only those two are padding too
  (B <- A with such a circle: `abdomen` 0.256 -> 0.395 Dice). Planes inside the scan are kept
  (they are anatomy, or real air);
* an optional user mask (a label map on the image's grid, nonzero = use), e.g. to leave out a
  tumour, metal or the table.

The fixed mask lies on the working grid; the moving mask is taken to the fixed space through
the initial alignment, like the moving features (outside the moving grid: 0). The solver also
caps its search along each axis by the fixed scanned region's thickness there
(:func:`scanned_thickness`; :func:`voxelopt.solver.pyramid.search_radii`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional, Tuple

import numpy as np
import SimpleITK as sitk

from .errors import InputError
from .geometry import Grid, resample_image
from .inputs import checked_label_values
from .io import ImageLike
from . import voxels

if TYPE_CHECKING:  # torch is needed by working_mask only; the user-mask checks run before it is loaded
    import torch


def scanned_box(array: np.ndarray, window_low: Optional[float] = None) -> Tuple[Tuple[int, int], ...]:
    """The scanned region of an image array: per array axis (z, y, x), the first and last index
    of the planes that are not padding (see the module docstring; ``window_low``: the HU window's
    low end, below which two values may pad together); the whole axis when the array is constant
    (nothing is scanned, or everything is). Reads the padding planes and at most as many again
    per side (:func:`_padding_planes`), not the whole array."""
    box = []
    for axis, n in enumerate(array.shape):
        first = _padding_planes(array, axis, False, window_low)
        if first == n:  # every plane is padding: a constant array
            return tuple((0, m - 1) for m in array.shape)
        box.append((first, n - 1 - _padding_planes(array, axis, True, window_low)))
    return tuple(box)


def _padding_planes(array: np.ndarray, axis: int, from_end: bool, window_low: Optional[float] = None) -> int:
    """How many planes along ``axis``, from its first (or, ``from_end``, its last) plane inward,
    hold only the value of that border plane's first voxel, or, when the border plane holds two
    values that both lie at or below ``window_low`` (which the features do not tell apart: -1024
    padding and -3024 outside the reconstruction circle), only those two; 0 when the border plane
    holds other values (it is scanned).

    The planes are read in blocks of consecutive planes, 8 then doubling, so at most about twice
    the padding (and 8 planes where there is none): a plane across the last axis alone is one
    voxel per row, which costs a memory line per voxel (one 512x512x600 image of the benchmark
    pair, 56 and 16 padding planes per side along y and x: 0.22 s read plane by plane, 0.085 s in
    blocks)."""
    n = array.shape[axis]
    values = _plane_values(np.take(array, n - 1 if from_end else 0, axis=axis))
    if values is None or (len(values) == 2 and (window_low is None or max(values) > window_low)):
        return 0
    others = tuple(a for a in range(array.ndim) if a != axis)
    done, block = 0, 8
    while done < n:
        count = min(block, n - done)
        planes = [slice(None)] * array.ndim
        planes[axis] = slice(n - done - count, n - done) if from_end else slice(done, done + count)
        planes_read = array[tuple(planes)]
        padding = planes_read == values[0]
        if len(values) == 2:
            padding |= planes_read == values[1]
        constant = np.all(padding, axis=others)  # per plane, in array order
        if from_end:
            constant = constant[::-1]
        if not constant.all():
            return done + int(np.argmin(constant))
        done += count
        block *= 2
    return n


def _plane_values(plane: np.ndarray) -> Optional[Tuple[object, ...]]:
    """The one or two values a plane holds, or None when it holds more."""
    first = plane.flat[0]
    other = plane != first
    if not other.any():
        return (first,)
    second = plane.flat[int(np.argmax(other))]
    return (first, second) if bool(np.all(~other | (plane == second))) else None


def scanned_thickness(array: np.ndarray) -> Tuple[float, float, float]:
    """Per array axis (z, y, x), how thick the scanned region of an image array is along it, as a
    fraction of the extent it spans along it: 1 for a box (a thin slab on its own or a taller
    grid), about 0.4 along z for a 40 mm slab resampled onto a grid tilted by 10-15 degrees, whose
    box along z also holds the tilt.

    Each line along the axis is scanned between the runs at its two ends that repeat its end
    voxels (padding, seen from that line; an end voxel that nothing repeats counts as a run of
    one); the thickness is the median length of the lines that hold any scanned voxel, over the
    extent from the first to the last scanned voxel of any of them. Lines are taken at every
    ``s``-th position across the axis, so that at most about :data:`THICKNESS_LINES` are read
    (0.05 s for a 512x512x600 image); 1.0 along an axis where no line holds a scanned voxel."""
    fractions = []
    for axis in range(3):
        across = [n for a, n in enumerate(array.shape) if a != axis]
        step = max(1, int(np.ceil(np.sqrt(across[0] * across[1] / THICKNESS_LINES))))
        lines = np.moveaxis(array, axis, -1)[::step, ::step]  # (lines, lines, along the axis)
        n = lines.shape[-1]
        lead = _run_length(lines == lines[..., :1])
        trail = _run_length((lines == lines[..., -1:])[..., ::-1])
        scanned = lead + trail < n  # a constant line is all padding (both runs n long)
        if not scanned.any():
            fractions.append(1.0)
            continue
        first, last = lead[scanned], n - 1 - trail[scanned]
        span = int(last.max() - first.min() + 1)
        fractions.append(min(1.0, float(np.median(last - first + 1)) / span))
    return (fractions[0], fractions[1], fractions[2])


#: Lines read per axis by :func:`scanned_thickness` (one 512x512x600 image: 4096 lines along z).
THICKNESS_LINES = 4096


def _run_length(equal: np.ndarray) -> np.ndarray:
    """Per line (last axis), how many leading entries are True (the line's length when all are)."""
    return np.where(equal.all(axis=-1), equal.shape[-1], np.argmin(equal, axis=-1))


def user_mask(mask: Optional[ImageLike], image: sitk.Image, what: str) -> Optional[np.ndarray]:
    """A user mask as a boolean (Z, Y, X) array on ``image``'s grid (nonzero = use), or None.

    The mask is a label map, checked as label maps are
    (:func:`voxelopt.inputs.checked_label_values`: an image given as a mask, with fractions or
    negative values, is refused), and resampled (nearest neighbour) onto the image's grid when its
    geometry differs; outside its own grid it is 0. Raises :class:`InputError` for a non-3-D,
    multi-component, non-finite, non-integer, negative or empty mask.
    """
    if mask is None:
        return None
    mask = checked_label_values(mask, what, allow_empty=True)  # emptiness on the image grid, below
    mask = resample_image(mask, Grid.from_image(image), interpolator=sitk.sitkNearestNeighbor, default=0)
    use = voxels.view(mask) != 0
    if not use.any():
        raise InputError(f"{what} has no nonzero voxel on its image's grid: nothing would be registered")
    return use


def clear_padding(values: np.ndarray, image_array: np.ndarray, window_low: Optional[float] = None) -> None:
    """Set ``values`` (an array of ``image_array``'s shape) to 0, in place, on the image's padding
    slabs: outside its :func:`scanned_box`."""
    for axis, (first, last) in enumerate(scanned_box(image_array, window_low)):
        before, after = [slice(None)] * values.ndim, [slice(None)] * values.ndim
        before[axis], after[axis] = slice(0, first), slice(last + 1, None)
        values[tuple(before)] = 0
        values[tuple(after)] = 0


def working_mask(image: sitk.Image, feature_grid: Grid, working_grid: Grid, device: "torch.device",
                 padding: bool, user: Optional[np.ndarray] = None, alignment: Optional[np.ndarray] = None,
                 window_low: Optional[float] = None) -> "Optional[torch.Tensor]":
    """(1, 1, Z, Y, X) float32 weights of ``image`` on the working grid, or None when all are 1.

    The image-grid mask (scanned region when ``padding``, :func:`scanned_box` with ``window_low``
    the HU window's low end; times ``user``) is resampled like the
    features: linearly onto the feature grid through ``alignment`` (4x4, fixed point x -> image
    point T(x); 0 outside the image), then averaged onto the working grid.
    """
    from .geometry import image_to_tensor, resize_volume

    if not padding and user is None:
        return None
    array = voxels.view(image)
    if user is None:  # the scanned region only: a box, sampled without an image-sized mask
        on_grid = _box_on_grid(image, scanned_box(array, window_low), feature_grid, alignment, device)
    else:  # 1 byte per image voxel, interpolated in double by ITK into float32 (as a float32 image would be)
        use = user.astype(np.uint8)
        if padding:
            clear_padding(use, array, window_low)
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
