"""Checking and preparing the inputs of a registration, without torch.

Everything a user can get wrong about the inputs (unreadable or non-3-D images, NaN voxels,
label maps that are not integers or do not overlap their image, images that do not overlap
after the initial alignment, an image too small for the pyramid) is found here, before torch is
imported, so that such errors are reported at once.

Grids (see :mod:`voxelopt.geometry`): the *fixed grid* is the fixed image's own; the *feature
grid* is its box at ``feature_spacing`` mm; the *working grid* is the feature grid scaled by
``working_scale`` (the final field is kept there, or on the fixed grid when that is coarser).
The initial alignment is a linear (affine) map T, fixed point x corresponding to moving point
T(x) (LPS mm, the direction ``sitk.Resample`` uses; a translation t for ``init`` none, centers
and com), from ``init`` and/or a user-given initial transform.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable, Hashable, List, Optional, Protocol, Tuple, Union

import numpy as np
import SimpleITK as sitk

from .config import RegistrationConfig
from .digest import Digest, image_digest
from .errors import ConfigError, InputError
from .geometry import Grid, affine_matrix, check_image, level_shapes, overlap_fraction, resample_image, window_hu
from .io import ImageLike, PathLike, as_image
from . import voxels


class ValueCache(Protocol):
    """Anything that keeps computed values by key, as :meth:`voxelopt.FeatureCache.get_or_compute_value`."""

    def get_or_compute_value(self, key: Hashable, compute: Callable[[], Any], keep: Optional[int] = None,
                             on_disk: bool = False) -> Any: ...


#: Registration refuses pairs whose fields of view overlap less than this after alignment.
MIN_OVERLAP = 0.05

#: Pixel types a label map may have (integers; converted to the smallest type that holds them).
_INTEGER_TYPES = (
    sitk.sitkUInt8, sitk.sitkInt8, sitk.sitkUInt16, sitk.sitkInt16, sitk.sitkUInt32, sitk.sitkInt32,
    sitk.sitkUInt64, sitk.sitkInt64,
)

#: What a user can do when the images do not overlap (the Slicer bridge rewrites it in GUI words).
_INIT_HINT = "try another initial alignment ('centers' or 'com'), or check the image headers"


@dataclasses.dataclass(frozen=True)
class PreparedPair:
    """Checked images and the grids of one registration.

    ``fixed`` and ``moving`` keep their pixel type (int16 CT stays int16); ``initial`` is the initial
    alignment as a 4x4 matrix (LPS mm): fixed point x corresponds to moving point ``initial @ (x, 1)``.
    ``field_grid`` is where the final field is kept: the working grid (the solver's finest, where
    the field has all its information), or the fixed grid when that is coarser.
    """

    fixed: sitk.Image
    moving: sitk.Image
    fixed_grid: Grid
    feature_grid: Grid
    working_grid: Grid
    field_grid: Grid
    initial: np.ndarray
    #: The user masks on their image's grid ((Z, Y, X) booleans, nonzero = use), or None.
    fixed_use: Optional[np.ndarray] = None
    moving_use: Optional[np.ndarray] = None



def checked_image(image: ImageLike, what: str) -> sitk.Image:
    """A scalar 3-D image with a usable geometry and finite voxels (its pixel type is kept)."""
    image = as_image(image, what)
    check_image(image, what, values=True)
    if min(image.GetSize()) < 2:
        raise InputError(f"{what} is a single slice (size {' x '.join(map(str, image.GetSize()))}): VoxelOpt registers "
                         "3-D volumes of at least 2 voxels along each axis")
    if image.GetPixelID() not in _INTEGER_TYPES + (sitk.sitkFloat32, sitk.sitkFloat64):
        raise InputError(f"{what} has an unsupported pixel type {image.GetPixelIDTypeAsString()}; need integer or float voxels")
    return image


def intensity_warnings(fixed: sitk.Image, moving: sitk.Image, window: Tuple[float, float]) -> List[str]:
    """Why the images may not suit the intensity ``window`` (HU) their features are computed in;
    empty when nothing is suspect. Raises :class:`InputError` for a pair in different units.

    CT in Hounsfield units has fat (about -100 HU) and air (about -1000) below 0, in any field of
    view of the abdomen. An image with no negative voxel, registered with a window that starts
    below 0, is most likely not in HU: stored without its rescale intercept (air at 0, soft
    tissue at about 1040, saturating the default window), 8-bit, or not CT; its registration can
    fail without any error (a BTCV pseudo-CT pair stored without the intercept: Dice 0.557 instead
    of 0.727; with the window moved by 1024, 0.716). When both images are so, a window set to
    their values serves both, and each gets a warning. When only one of them is, while the other
    is in HU (air below -500), no single window can serve both and every preset fails (A -> Adef
    with the moving image stored as uint16 + 1024: Dice 0.845 -> 0.033): that is an error. The
    median in the messages is of every 4th voxel along each axis.

    An image with no voxel inside the window (all air, or all above it) is an error: its features
    are constant, so the cost carries no information and the field would be arbitrary (a
    constant -1024 HU fixed image registered with ``paper``: displacements of 117 mm on average).
    """
    values = {"fixed image": voxels.view(fixed), "moving image": voxels.view(moving)}
    lowest = {what: float(v.min()) for what, v in values.items()}
    highest = {what: float(v.max()) for what, v in values.items()}
    for what in values:
        if highest[what] <= window[0] or lowest[what] >= window[1]:
            raise InputError(
                f"the {what} has no voxel inside the intensity window {window[0]:g} to {window[1]:g} (its voxels lie "
                f"from {lowest[what]:g} to {highest[what]:g}): nothing in it to register (an empty scan, all air?). Check "
                "the file, or set the window to the image's values (hu_window, --hu-window LOW HIGH)")
    if window[0] >= 0:
        return []
    not_hu = [what for what in values if lowest[what] >= 0]

    def described(what: str) -> str:
        v = values[what]
        return f"lowest {lowest[what]:g}, median {float(np.median(v[::4, ::4, ::4])):g}, highest {highest[what]:g}"

    if len(not_hu) == 1:
        odd = not_hu[0]
        other = "moving image" if odd == "fixed image" else "fixed image"
        if lowest[other] < -500:
            raise InputError(
                f"the {odd} has no voxel below 0 ({described(odd)}) while the {other} is in Hounsfield units "
                f"(lowest {lowest[other]:g}): the images are in different units, and one intensity window "
                f"(hu_window, --hu-window) applies to both, so the registration would fail. Convert the {odd} to "
                "HU first: CT stored without its rescale intercept needs it added (usually -1024, e.g. "
                "sitk.Cast(image, sitk.sitkInt16) - 1024); an image that is not CT does not suit VoxelOpt's HU features")
    return [f"{what}: no voxel below 0 ({described(what)}), while CT in Hounsfield units has fat and air below 0; "
            "if the image is not in HU (stored without its rescale intercept, or not CT), convert it or set the "
            f"intensity window to its values (hu_window, --hu-window LOW HIGH; now {window[0]:g} to {window[1]:g}): "
            "the registration may fail" for what in not_hu]


def checked_labels(labels: Optional[ImageLike], image: sitk.Image, what: str) -> Optional[sitk.Image]:
    """A label map (:func:`checked_label_values`) on ``image``'s grid (nearest neighbour when its
    geometry differs), or None. At least one labelled voxel must lie on the image: otherwise
    every score would be meaningless."""
    if labels is None:
        return None
    labels = checked_label_values(labels, what)
    on_image = resample_image(labels, Grid.from_image(image), interpolator=sitk.sitkNearestNeighbor, default=0)
    if not np.any(voxels.view(on_image)):
        raise InputError(f"{what} do not overlap their image: no labelled voxel lies inside it (check the headers)")
    return on_image


def checked_label_values(labels: ImageLike, what: str, allow_empty: bool = False) -> sitk.Image:
    """``labels`` as a 3-D label map: non-negative integers up to :data:`MAX_LABEL` (float files
    holding integers are accepted) and, unless ``allow_empty`` (e.g. a warp's output, which may
    have lost every label), at least one labelled voxel. Integer label maps keep their pixel
    type; float ones become the smallest unsigned type that holds them."""
    labels = as_image(labels, what)
    check_image(labels, what)
    values = voxels.view(labels)
    if labels.GetPixelID() not in _INTEGER_TYPES:
        if not np.isfinite(values).all() or not np.array_equal(values, np.round(values)):
            raise InputError(f"{what} must hold non-negative integer labels (found fractions, NaN or infinities: "
                             "is this an image rather than a label map?)")
    if values.size and values.min() < 0:
        raise InputError(f"{what} must hold non-negative integer labels (found {values.min()}: is this an image "
                         "rather than a label map?)")
    if not allow_empty and (not values.size or values.max() == 0):
        raise InputError(f"{what} holds no labelled voxel (all zero)")
    if values.size and values.max() > MAX_LABEL:
        raise InputError(f"{what} holds the label {int(values.max())}; labels up to {MAX_LABEL} are supported "
                         "(renumber the labels)")
    if labels.GetPixelID() not in _INTEGER_TYPES:  # integer labels keep their type
        labels = sitk.Cast(labels, LABEL_TYPES[label_dtype(int(values.max()) if values.size else 0)])
    return labels


#: Largest label value accepted (the scores count labels with one histogram bin per value).
MAX_LABEL = 2**24


#: The pixel types of label maps made here, smallest first: numpy dtype -> SimpleITK pixel type.
LABEL_TYPES = {np.dtype(np.uint8): sitk.sitkUInt8, np.dtype(np.uint16): sitk.sitkUInt16,
               np.dtype(np.uint32): sitk.sitkUInt32}


#: Unsigned integer types and the signed type of the same width, through which their voxels are
#: read where torch does not take the unsigned type (values that fit, or bits only copied).
SIGNED_OF_UNSIGNED = {np.dtype(np.uint16): np.dtype(np.int16), np.dtype(np.uint32): np.dtype(np.int32),
                      np.dtype(np.uint64): np.dtype(np.int64)}


def label_dtype(largest_label: int) -> np.dtype:
    """The smallest unsigned type of :data:`LABEL_TYPES` that holds labels 0..``largest_label``
    (uint32 beyond; labels above :data:`MAX_LABEL` are refused by :func:`checked_labels`)."""
    for dtype in LABEL_TYPES:
        if largest_label <= np.iinfo(dtype).max:
            return dtype
    return np.dtype(np.uint32)


def initial_translation(fixed: sitk.Image, moving: sitk.Image, mode: str,
                        window: Tuple[float, float] = (-800.0, 500.0)) -> np.ndarray:
    """Translation t (mm, LPS) with ``x -> x + t`` mapping fixed points to moving points.

    ``"none"``: zero; ``"centers"``: between the image centres; ``"com"``: between the centres of
    mass of the windowed intensities (air weighs 0).
    """
    if mode == "none":
        return np.zeros(3)
    if mode == "centers":
        return Grid.from_image(moving).center() - Grid.from_image(fixed).center()
    if mode == "com":
        return _centre_of_mass(moving, window) - _centre_of_mass(fixed, window)
    raise InputError(f"unknown initial alignment {mode!r}")


def _centre_of_mass(image: sitk.Image, window: Tuple[float, float]) -> np.ndarray:
    """The intensity-weighted centre (LPS mm) of ``image``'s voxels windowed to ``window`` (HU).

    Every 2nd voxel per axis is read (plenty for a centre of mass); each stands for the block of
    up to 2 voxels per axis that starts at it, at that block's centre and weighted by its voxel
    count, so the estimate has no half-voxel bias towards index 0 (it does not depend on the way
    the image is stored: flipped or with an odd number of slices).
    """
    step = 2
    with np.errstate(over="ignore"):  # float64 voxels beyond float32 become +-inf, which the window clips
        weights = window_hu(voxels.view(image)[::step, ::step, ::step].astype(np.float32), window)
    grid = Grid.from_image(image)
    centres = []
    for axis, n in enumerate(grid.shape):  # z, y, x
        starts = np.arange(0, n, step)
        ends = np.minimum(starts + step, n)
        centres.append((starts + ends - 1) / 2.0)
        counts = np.expand_dims((ends - starts).astype(np.float32), tuple(a for a in range(3) if a != axis))
        weights *= counts  # in place: no second copy of the samples (the counts, 1 or 2, are exact)
    total = float(weights.sum(dtype=np.float64))
    if total <= 0:
        return grid.center()
    index_zyx = [float((weights.sum(axis=tuple(a for a in range(3) if a != axis), dtype=np.float64)
                        * centres[axis]).sum() / total) for axis in range(3)]
    index_ijk = np.asarray(index_zyx[::-1])
    return np.asarray(grid.origin) + grid.index_to_physical @ index_ijk


@dataclasses.dataclass(frozen=True)
class CheckedPair:
    """A pair whose images, grids and masks are checked (see :func:`check_inputs`); not yet aligned."""

    fixed: sitk.Image
    moving: sitk.Image
    fixed_grid: Grid
    feature_grid: Grid
    working_grid: Grid
    fixed_use: Optional[np.ndarray]
    moving_use: Optional[np.ndarray]


#: An image smaller than this (mm) along every axis cannot be an abdominal scan in millimetres.
SMALLEST_SCAN_MM = 30.0


def _units_note(image: sitk.Image, what: str) -> str:
    """Why ``image`` is probably not in millimetres ("" when it may be): smaller than
    :data:`SMALLEST_SCAN_MM` along every axis, as a scan stored in metres or centimetres is."""
    extent = [n * s for n, s in zip(image.GetSize(), image.GetSpacing())]
    if max(extent) >= SMALLEST_SCAN_MM:
        return ""
    return (f"the {what} is only {' x '.join(f'{e:.3g}' for e in extent)} mm across (spacing "
            f"{' x '.join(f'{s:.3g}' for s in image.GetSpacing())}): is its spacing in metres or centimetres? "
            "Spacing is read in millimetres (ITK's convention); rescale the spacing and origin")


def input_warnings(fixed: sitk.Image, moving: sitk.Image, window: Tuple[float, float]) -> List[str]:
    """Every warning about the images themselves: :func:`intensity_warnings`, and an image too
    small to be in millimetres."""
    notes = intensity_warnings(fixed, moving, window)
    return notes + [note for note in (_units_note(fixed, "fixed image"), _units_note(moving, "moving image")) if note]


def check_inputs(fixed: ImageLike, moving: ImageLike, config: RegistrationConfig,
                 fixed_mask: Optional[ImageLike] = None, moving_mask: Optional[ImageLike] = None) -> CheckedPair:
    """Check the images and the user masks (see :func:`voxelopt.masks.user_mask`) and build the grids.

    Fast (no alignment, no torch): every error a user can cause with the inputs themselves is
    raised here.
    """
    from .masks import user_mask

    fixed_image = checked_image(fixed, "fixed image")
    moving_image = checked_image(moving, "moving image")
    fixed_grid = Grid.from_image(fixed_image)
    feature_grid = fixed_grid.with_spacing(config.feature_spacing) if config.feature_spacing else fixed_grid
    working_grid = feature_grid.scaled(config.working_scale)
    try:
        level_shapes(working_grid.shape, config.levels)  # fail fast if the image is too small
    except InputError as error:
        note = _units_note(fixed_image, "fixed image")
        raise InputError(f"{error}. {note[0].upper()}{note[1:]}" if note else str(error)) from None
    return CheckedPair(fixed_image, moving_image, fixed_grid, feature_grid, working_grid,
                       user_mask(fixed_mask, fixed_image, "fixed mask"), user_mask(moving_mask, moving_image, "moving mask"))


def align(checked: CheckedPair, config: RegistrationConfig,
          initial_transform: Optional[Union[sitk.Transform, PathLike]] = None,
          cache: Optional[ValueCache] = None, digest: Digest = image_digest) -> PreparedPair:
    """Find the initial alignment of a checked pair (see :func:`initial_alignment`) and check the overlap.

    ``initial_transform``: a linear transform (or an ITK transform file) mapping fixed points to
    moving points; used as it is with ``init="none"``, as the start of ``init="affine"``.
    ``cache``: where the affine estimate is kept between calls (its key uses ``digest``). The
    user masks restrict the affine stage as well as the cost.
    """
    c = checked
    initial = initial_alignment(c.fixed, c.moving, config, initial_transform, cache, c.fixed_use, c.moving_use, digest)
    overlap = overlap_fraction(c.fixed_grid, c.moving, initial)
    if overlap < MIN_OVERLAP:
        volumes = [float(np.prod(np.asarray(image.GetSize()) * np.asarray(image.GetSpacing())))
                   for image in (c.fixed, c.moving)]  # of their boxes, mm^3
        hint = _INIT_HINT
        if volumes[1] < MIN_OVERLAP * volumes[0]:  # no alignment can place enough of the fixed image inside it
            hint = (f"the moving image's box is only {100 * volumes[1] / volumes[0]:.1f}% of the fixed image's: "
                    "register the other way round (the smaller scan as the fixed image), or crop the fixed image "
                    "to the region the moving one covers")
        raise InputError(
            f"the fixed and moving images do not overlap after the '{config.init}' initial alignment "
            f"({100 * overlap:.1f}% of the fixed image lies inside the moving one, need {100 * MIN_OVERLAP:.0f}%); "
            + hint
        )
    field_grid = c.working_grid if np.prod(c.working_grid.size) <= np.prod(c.fixed_grid.size) else c.fixed_grid
    return PreparedPair(c.fixed, c.moving, c.fixed_grid, c.feature_grid, c.working_grid, field_grid, initial,
                        c.fixed_use, c.moving_use)


def prepare(fixed: ImageLike, moving: ImageLike, config: RegistrationConfig,
            initial_transform: Optional[Union[sitk.Transform, PathLike]] = None,
            cache: Optional[ValueCache] = None, fixed_mask: Optional[ImageLike] = None,
            moving_mask: Optional[ImageLike] = None) -> PreparedPair:
    """:func:`check_inputs` then :func:`align`: checked images, grids, masks and the initial alignment."""
    return align(check_inputs(fixed, moving, config, fixed_mask, moving_mask), config, initial_transform, cache)


def _mask_image(use: np.ndarray, image: sitk.Image) -> sitk.Image:
    """A boolean (Z, Y, X) mask as a UInt8 image on ``image``'s grid."""
    mask = sitk.GetImageFromArray(use.astype(np.uint8))
    mask.CopyInformation(image)
    return mask


def initial_alignment(fixed: sitk.Image, moving: sitk.Image, config: RegistrationConfig,
                      initial_transform: Optional[Union[sitk.Transform, PathLike]] = None,
                      cache: Optional[ValueCache] = None, fixed_use: Optional[np.ndarray] = None,
                      moving_use: Optional[np.ndarray] = None, digest: Digest = image_digest) -> np.ndarray:
    """The 4x4 matrix (LPS mm) of the initial alignment, fixed point -> moving point.

    With a ``cache`` (e.g. a :class:`voxelopt.FeatureCache`), the affine estimate is computed
    once per pair of image contents, HU window and starting transform (it is deterministic), so
    a re-run with other solver parameters does not repeat it. ``fixed_use``, ``moving_use``:
    user masks ((Z, Y, X) booleans on the image's grid) the affine metric is restricted to.
    """
    from .affine import SETTINGS, estimate_affine, linear_to_affine, read_initial_transform

    start = None
    if initial_transform is not None:
        if config.init not in ("none", "affine"):
            preset_note = " (the 'fast' preset's init)" if config.init == "com" else ""
            raise ConfigError(f"an initial transform is used with init 'none' (as it is) or 'affine' (as the affine "
                              f"stage's start), not {config.init!r}{preset_note}: set init (--init) to 'none' or 'affine'")
        if isinstance(initial_transform, sitk.Transform):
            start = linear_to_affine(initial_transform, "initial transform")
        elif isinstance(initial_transform, (str, os.PathLike)):
            start = read_initial_transform(initial_transform)
        else:
            raise InputError("the initial transform must be a linear SimpleITK transform or an ITK transform file, got "
                             f"{type(initial_transform).__name__} (a 4x4 matrix M mapping fixed to moving points in LPS "
                             "mm: sitk.AffineTransform(M[:3, :3].ravel(), M[:3, 3]))")
    if config.init == "affine":
        masks = [None if use is None else _mask_image(use, image) for use, image in ((fixed_use, fixed), (moving_use, moving))]

        def estimate() -> np.ndarray:
            return affine_matrix(estimate_affine(fixed, moving, config.hu_window, initial=start,
                                                 fixed_mask=masks[0], moving_mask=masks[1]))

        if cache is None:
            return estimate()
        key = ("affine", SETTINGS, digest(fixed), digest(moving), tuple(config.hu_window),
               None if start is None else start.GetParameters() + start.GetFixedParameters(),
               *(None if m is None else image_digest(m) for m in masks))
        return cache.get_or_compute_value(key, estimate, on_disk=True, valid=lambda m: isinstance(m, np.ndarray) and (
            m.shape == (4, 4) and bool(np.isfinite(m).all()))).copy()
    if start is not None:
        return affine_matrix(start)
    matrix = np.eye(4)
    matrix[:3, 3] = initial_translation(fixed, moving, config.init, config.hu_window)
    return matrix
