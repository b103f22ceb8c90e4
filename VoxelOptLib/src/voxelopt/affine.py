"""Linear pre-alignment: a 12-parameter affine estimate, and user-given ITK linear transform files.

Direction convention (the same as ITK transform files, ``sitk.Resample`` and Slicer's
"FromParent" transform): every transform here maps a point x of the **fixed** image (LPS mm)
to the point T(x) of the **moving** image that lands on it, so the pre-aligned moving image is
``moving(T(x))`` on the fixed grid. A deformable field u estimated after it composes as
``d(x) = T(x + u(x)) - x``.

SimpleITK only; no torch.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional, Tuple

import numpy as np
import SimpleITK as sitk

from .errors import InputError, itk_message
from .geometry import check_image
from .io import PathLike
from . import voxels

#: Voxel size (mm) of the images the affine metric is computed on (the finest level).
ANALYSIS_SPACING_MM = 4.0
#: The fewest voxels (at the analysis spacing) of each image's region that the alignment takes.
MIN_REGION_VOXELS = 8
#: At most this many voxels of the fixed mask are sampled by the metric at each level (a regular
#: grid with ITK's seeded jitter); smaller masks are sampled entirely. Chosen with
#: ``benchmarks/affine_init.py`` (mean Dice after the alignment on 8 development pairs: 0.371 with
#: every voxel, 0.374 with 100 000, 0.389 with 50 000, 0.373 with 35 000, 0.356 with 25 000).
METRIC_SAMPLES = 50_000
#: Optimizer steps of the affine transform at each of the two levels, after
#: :data:`RIGID_ITERATIONS` steps of a rigid one. Chosen with ``benchmarks/affine_stage.py``: 20 + 30
#: steps gave the default registration the Dice of the former 60 + 60 (0.594 vs 0.595 on the
#: development pairs) in about 55 % of the time; without the rigid stage the Dice was as good but
#: a known affine was recovered from a thin slab only to 0.9 mm (3.1 mm worst) instead of 0.25 mm.
ITERATIONS = 30
#: Optimizer steps of the rigid stage before the affine one at each level (0: none).
RIGID_ITERATIONS = 20
#: Largest scale (and smallest, its inverse) along any direction of an affine estimate that is kept;
#: beyond it, or mirrored, the rigid estimate is used (:func:`plausible_linear`). A safety net, not
#: a tuned value: every development pair's estimate is within it (singular values 0.47-1.18, the
#: lowest on the thin B as moving image); with 2 that one was dropped (B -> A with ``abdomen``: Dice
#: 0.374 -> 0.359). ``benchmarks/thin_slabs.py``: no slab lost or folded with either.
MAX_SCALE = 3.0
#: Seed of the metric's sampling, so the same pair always gives the same transform.
SAMPLING_SEED = 1
#: The settings the estimate depends on besides its inputs: part of its cache key (a kept
#: estimate, e.g. on disk, is not reused once any of them changes).
SETTINGS = (ANALYSIS_SPACING_MM, METRIC_SAMPLES, RIGID_ITERATIONS, ITERATIONS, SAMPLING_SEED, MAX_SCALE)
#: Fewest voxels per axis of the images the metric is computed on (ITK's recursive Gaussian
#: smoothing needs 4).
_MIN_AXIS_VOXELS = 4
#: Pixel types clipped to the HU window in place (others are cast to float32 first).
_SIGNED_OR_FLOAT = (sitk.sitkInt16, sitk.sitkInt32, sitk.sitkInt64, sitk.sitkFloat32, sitk.sitkFloat64)


def estimate_affine(
    fixed: sitk.Image,
    moving: sitk.Image,
    window: Tuple[float, float] = (-800.0, 500.0),
    initial: Optional[sitk.Transform] = None,
    fixed_mask: Optional[sitk.Image] = None,
    moving_mask: Optional[sitk.Image] = None,
) -> sitk.AffineTransform:
    """The affine transform (12 degrees of freedom) that best aligns ``moving`` to ``fixed``.

    Args:
        fixed, moving: scalar 3-D CT images (HU), any grids and orientations.
        window: HU window; intensities are clipped to it and scaled to [0, 1] (air weighs 0).
        initial: a linear transform (fixed -> moving points) to start from; default: the
            translation between the centres of mass of the windowed images.
        fixed_mask, moving_mask: non-zero where the image holds scanned anatomy; the metric
            samples only there. Default: the box around the voxels above ``window[0]`` (the
            scanned region, so a thin slab padded with air on a larger grid is compared only
            where it was scanned).

    Returns:
        An ``sitk.AffineTransform`` mapping fixed LPS mm points to moving points (resampling
        direction: ``sitk.Resample(moving, fixed, transform)`` gives the aligned moving image).
        Its centre is the fixed image's centre of mass.

    The images are windowed and reduced to :data:`ANALYSIS_SPACING_MM` (box-filter shrink);
    the transform is found with Mattes mutual information (robust to contrast differences) on
    at most :data:`METRIC_SAMPLES` voxels of the fixed mask, first rigid, then affine, each over
    two resolution levels (8 and 4 mm; :data:`RIGID_ITERATIONS` and :data:`ITERATIONS` steps).
    An affine result that mirrors or scales beyond :data:`MAX_SCALE` is replaced by the rigid one
    (:func:`plausible_linear`). Images of a few slices on their own short grid are handled (an
    axis keeps at least 4 voxels; see :func:`_windowed_and_shrunk`).

    The result is reproducible: the sampling is seeded and the optimisation runs on one thread
    (ITK's multi-threaded Mattes metric sums its gradient in a run-dependent order, which
    changed the transform, and the Dice after it by up to 7 points, from run to run). While it
    runs, SimpleITK's global default thread count is 1 for filters created by other threads too.
    """
    for image, what in ((fixed, "fixed image"), (moving, "moving image")):
        check_image(image, what)
    fixed_small = _windowed_and_shrunk(fixed, window)
    moving_small = _windowed_and_shrunk(moving, window)
    fixed_scanned, moving_scanned = _scanned_region(fixed_small, "fixed"), _scanned_region(moving_small, "moving")
    fixed_region = fixed_scanned if fixed_mask is None else sitk.And(_mask_on(fixed_mask, fixed_small, "fixed mask"), fixed_scanned)
    moving_region = moving_scanned if moving_mask is None else sitk.And(_mask_on(moving_mask, moving_small, "moving mask"), moving_scanned)

    for image, region, what in ((fixed_small, fixed_region, "fixed"), (moving_small, moving_region, "moving")):
        _require_contrast(image, region, what)
    # the centres of mass of corresponding regions: both masks, else both scanned regions (the
    # centre of one image's organs against the other's whole body would start tens of mm off)
    both_masked = fixed_mask is not None and moving_mask is not None
    masked = fixed_mask is not None or moving_mask is not None
    centre = _centre_of_mass(fixed_small, fixed_region if both_masked else fixed_scanned)
    if initial is None:
        start = sitk.AffineTransform(3)
        start.SetCenter(centre)
        start.SetTranslation(tuple(_centre_of_mass(moving_small, moving_region if both_masked else moving_scanned)
                                   - np.asarray(centre)))
    else:
        start = _recentred(linear_to_affine(initial, "initial transform"), centre)

    if RIGID_ITERATIONS > 0:  # rotation and translation first: a thin slab constrains little else
        rigid = sitk.Euler3DTransform()
        rigid.SetCenter(centre)
        rigid.SetMatrix(_nearest_rotation(np.asarray(start.GetMatrix()).reshape(3, 3)).ravel().tolist())
        rigid.SetTranslation(start.GetTranslation())
        rigid = _register(fixed_small, moving_small, fixed_region, moving_region, rigid, RIGID_ITERATIONS, masked)
        start = sitk.AffineTransform(3)
        start.SetCenter(centre)
        start.SetMatrix(rigid.GetMatrix())
        start.SetTranslation(rigid.GetTranslation())
    affine = _register(fixed_small, moving_small, fixed_region, moving_region, sitk.AffineTransform(start), ITERATIONS,
                       masked)
    # a thin slab constrains the affine part little: one that mirrors or scales beyond any anatomy
    # is dropped for the rigid estimate it started from
    return affine if plausible_linear(np.asarray(affine.GetMatrix()).reshape(3, 3)) else start


def plausible_linear(matrix: np.ndarray) -> bool:
    """Whether a 3x3 linear part can map one patient's anatomy onto another's: no mirroring
    (positive determinant) and a scale within :data:`MAX_SCALE` along every direction (singular
    values between 1 / MAX_SCALE and MAX_SCALE); see :func:`linear_problem`."""
    return linear_problem(matrix) is None


def linear_problem(matrix: np.ndarray) -> Optional[str]:
    """Why a 3x3 linear part cannot map one patient's anatomy onto another's, as words that follow
    a transform's name ("is singular ...", "mirrors space ...", "scales by ..."), or None when it
    can. The affine stage drops such estimates of its own; a user's transform is refused with
    these words (:func:`linear_to_affine`): through a mirroring one every voxel would fold."""
    singular = np.linalg.svd(matrix, compute_uv=False)
    if singular.max() == 0.0 or singular.min() <= 1e-6 * singular.max():
        return "is singular (its matrix maps space onto a plane, a line or a point), so it cannot align two images"
    if np.linalg.det(matrix) < 0:
        return ("mirrors space (its matrix has a negative determinant): a registration through it would fold every "
                "voxel. A mirrored transform often comes from mixing RAS and LPS coordinates (ITK transform files "
                "are in LPS)")
    if singular.min() < 1.0 / MAX_SCALE or singular.max() > MAX_SCALE:
        return (f"scales by {singular.min():.3g} to {singular.max():.3g} along some direction, beyond the "
                f"{1.0 / MAX_SCALE:.3g} to {MAX_SCALE:g} that maps one patient's anatomy onto another's (millimetres "
                "mixed with centimetres or metres?)")
    return None


def _register(fixed: sitk.Image, moving: sitk.Image, fixed_region: sitk.Image, moving_region: sitk.Image,
              transform: sitk.Transform, iterations: int, masked: bool = False) -> sitk.Transform:
    in_region = int(np.count_nonzero(voxels.view(fixed_region)))
    with _one_thread():  # the metric takes its thread count from the global default, not from the method
        method = sitk.ImageRegistrationMethod()
        method.SetMetricAsMattesMutualInformation(numberOfHistogramBins=32)
        method.SetMetricFixedMask(fixed_region)
        method.SetMetricMovingMask(moving_region)
        if in_region > METRIC_SAMPLES:
            method.SetMetricSamplingStrategy(method.REGULAR)
            method.SetMetricSamplingPercentage(METRIC_SAMPLES / in_region, SAMPLING_SEED)
        method.SetInterpolator(sitk.sitkLinear)
        method.SetOptimizerAsRegularStepGradientDescent(learningRate=2.0, minStep=0.003, numberOfIterations=iterations,
                                                         relaxationFactor=0.6, gradientMagnitudeTolerance=1e-6)
        method.SetOptimizerScalesFromPhysicalShift()
        method.SetShrinkFactorsPerLevel([2, 1])
        method.SetSmoothingSigmasPerLevel([1.0, 0.0])
        method.SmoothingSigmasAreSpecifiedInPhysicalUnitsOff()
        method.SetInitialTransform(transform, inPlace=True)
        try:
            method.Execute(fixed, moving)
        except RuntimeError as error:
            hint = (f"do the images overlap? With masks, are they thick enough for the first level at "
                    f"{2 * ANALYSIS_SPACING_MM:g} mm (the fixed one holds {in_region} voxels of "
                    f"{ANALYSIS_SPACING_MM:g} mm)? Else use init 'com' or 'none'" if masked else "do the images overlap?")
            raise InputError(f"affine alignment failed ({hint}): {itk_message(error)}") from None
    return transform


@contextmanager
def _one_thread() -> Iterator[None]:
    """SimpleITK's global default thread count set to 1, restored when the last of the
    overlapping users (registrations in several threads) leaves."""
    global _one_thread_users, _threads_before
    with _one_thread_lock:
        if _one_thread_users == 0:
            _threads_before = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
            sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)
        _one_thread_users += 1
    try:
        yield
    finally:
        with _one_thread_lock:
            _one_thread_users -= 1
            if _one_thread_users == 0:
                sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(_threads_before)


_one_thread_lock = threading.Lock()
_one_thread_users = 0
_threads_before = 0


def _windowed_and_shrunk(image: sitk.Image, window: Tuple[float, float]) -> sitk.Image:
    """The image clipped to ``window`` and scaled to [0, 1], box-averaged to about 4 mm voxels.

    A thin image keeps at least :data:`_MIN_AXIS_VOXELS` voxels per axis (the smoothing of the
    registration's coarse level needs them): an axis is shrunk less where it would have fewer,
    and one that has fewer even unshrunk is padded with air (0, outside the scanned region, so
    the metric never samples it). A slab of 6 mm (3 slices of 2 mm) is aligned instead of
    failing in ITK's smoothing filter.

    The small image does not depend on the order the voxels are stored in: the image is put in
    LPS storage order first (:func:`_in_lps_storage`), so the same image stored RAS or with its
    axes swapped gives the same small image, the same metric samples and the same estimate.
    (The pixel type does matter a little: BinShrink rounds an integer image's means to whole HU,
    and the mutual-information optimum moves with such small changes of the input.)"""
    low, high = (float(v) for v in window)
    if not high > low:
        raise InputError(f"the HU window must have low < high, got {window}")
    image = _in_lps_storage(image)
    factors = [max(1, min(int(round(ANALYSIS_SPACING_MM / s)), n // _MIN_AXIS_VOXELS))
               for s, n in zip(image.GetSpacing(), image.GetSize())]
    # Windowing is a clip followed by a linear map, and the linear map commutes with averaging: so
    # clip in the image's own type, average, and map the small image (5x faster on int16 CT than
    # windowing the full image in float; BinShrink rounds the mean of an integer image, < 0.5 HU).
    if image.GetPixelID() not in _SIGNED_OR_FLOAT:
        image = sitk.Cast(image, sitk.sitkFloat32)
    clipped = sitk.Clamp(image, image.GetPixelID(), low, high)
    small = sitk.IntensityWindowing(sitk.Cast(sitk.BinShrink(clipped, factors), sitk.sitkFloat32), low, high, 0.0, 1.0)
    missing = [max(0, _MIN_AXIS_VOXELS - n) for n in small.GetSize()]
    if any(missing):
        small = sitk.ConstantPad(small, [m // 2 for m in missing], [m - m // 2 for m in missing], 0.0)
    return small


def _in_lps_storage(image: sitk.Image) -> sitk.Image:
    """``image`` with its voxels stored in LPS order (array axes flipped and permuted so that the
    index axes point as near as possible to L, P and S; :func:`sitk.DICOMOrient`): the same
    physical image stored in another order (RAS, axes swapped) then gives the same shrunk image
    and the same metric samples, so the same estimate. Itself when it is stored so already."""
    orientation = sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines(image.GetDirection())
    return image if orientation == "LPS" else sitk.DICOMOrient(image, "LPS")


def _scanned_region(windowed: sitk.Image, what: str) -> sitk.Image:
    """A mask of the box around the voxels brighter than the window's low end (the scanned region)
    of the ``what`` ("fixed" or "moving") image."""
    above = sitk.Cast(windowed > 0.0, sitk.sitkUInt8)
    stats = sitk.LabelShapeStatisticsImageFilter()
    stats.Execute(above)
    if not stats.HasLabel(1):
        raise InputError(f"the {what} image holds no voxel inside the HU window (all air?): nothing to align")
    x, y, z, nx, ny, nz = stats.GetBoundingBox(1)
    region = sitk.Image(windowed.GetSize(), sitk.sitkUInt8)
    region.CopyInformation(windowed)
    region[x:x + nx, y:y + ny, z:z + nz] = 1
    return region


def _mask_on(mask: sitk.Image, reference: sitk.Image, what: str) -> sitk.Image:
    """A user mask (any grid) as a UInt8 0/1 image on ``reference``'s grid (nearest neighbour)."""
    check_image(mask, what)
    on_grid = sitk.Resample(sitk.Cast(mask != 0, sitk.sitkUInt8), reference, sitk.Transform(), sitk.sitkNearestNeighbor, 0)
    if not np.any(voxels.view(on_grid)):
        if np.any(voxels.view(mask)):
            raise InputError(f"the {what} is too small for the affine alignment: none of its voxels is left at the "
                             f"{ANALYSIS_SPACING_MM:g} mm analysis spacing inside the image (a larger mask, or init "
                             "'com' or 'none')")
        raise InputError(f"the {what} is empty (no non-zero voxel inside the image)")
    return on_grid


def _require_contrast(windowed: sitk.Image, region: sitk.Image, what: str) -> None:
    """Refuse an image that is uniform inside its region: mutual information has nothing to align."""
    values = voxels.view(windowed)[voxels.view(region) > 0]
    if values.size < MIN_REGION_VOXELS:
        raise InputError(f"the {what} image has {values.size} voxel(s) of {ANALYSIS_SPACING_MM:g} mm in its scanned "
                         f"region (within its mask, if one is given): too few for an affine alignment (at least "
                         f"{MIN_REGION_VOXELS}; a larger mask, or init 'com' or 'none')")
    if float(values.max()) - float(values.min()) <= 1e-6:
        raise InputError(f"the {what} image is uniform inside the HU window within its scanned region: an affine "
                         "alignment has nothing to match (use init 'com' or 'none')")


def _centre_of_mass(windowed: sitk.Image, region: sitk.Image) -> Tuple[float, float, float]:
    """Centre of mass (LPS mm) of the windowed intensities inside ``region`` (air weighs 0)."""
    stats = sitk.LabelIntensityStatisticsImageFilter()
    stats.Execute(region, windowed)
    if stats.GetSum(1) <= 0:
        raise InputError("an image holds no voxel inside the HU window within its mask: nothing to align")
    return tuple(float(v) for v in stats.GetCenterOfGravity(1))


def _nearest_rotation(matrix: np.ndarray) -> np.ndarray:
    """The proper rotation closest to ``matrix`` (polar decomposition)."""
    u, _, vt = np.linalg.svd(matrix)
    rotation = u @ vt
    if np.linalg.det(rotation) < 0:
        u[:, -1] *= -1
        rotation = u @ vt
    return rotation


def _recentred(affine: sitk.AffineTransform, centre) -> sitk.AffineTransform:
    """The same mapping as ``affine``, parameterised about ``centre``."""
    out = sitk.AffineTransform(3)
    out.SetMatrix(affine.GetMatrix())
    out.SetCenter(centre)
    out.SetTranslation(tuple(np.asarray(affine.TransformPoint(centre)) - np.asarray(centre)))
    return out


# ====================================================================== transform files
def linear_to_affine(transform: sitk.Transform, what: str = "transform") -> sitk.AffineTransform:
    """Any 3-D linear SimpleITK transform (translation, Euler, similarity, affine, a composite
    of linear ones) as one ``sitk.AffineTransform`` that maps every point the same way.

    Raises :class:`InputError` for a non-linear (deformable) or non-3-D transform, and for one
    that cannot align two patients' anatomy (:func:`linear_problem`).
    """
    if transform.GetDimension() != 3:
        raise InputError(f"the {what} is {transform.GetDimension()}-D; a 3-D transform is needed")
    if not transform.IsLinear():
        raise InputError(f"the {what} is not linear ({transform.GetName()}); give a translation, rigid, "
                         "similarity or affine transform (a deformable field is not an initial alignment)")
    # A linear map is fixed by the images of the origin and the unit vectors.
    offset = np.asarray(transform.TransformPoint((0.0, 0.0, 0.0)))
    matrix = np.column_stack([np.asarray(transform.TransformPoint(tuple(e))) - offset for e in np.eye(3)])
    if not (np.isfinite(matrix).all() and np.isfinite(offset).all()):
        raise InputError(f"the {what} holds infinite or NaN values")
    problem = linear_problem(matrix)
    if problem is not None:
        raise InputError(f"the {what} {problem}")
    affine = sitk.AffineTransform(3)
    affine.SetMatrix(matrix.ravel().tolist())
    affine.SetTranslation(offset.tolist())
    return affine


def _refuse_several_transforms(path: Path) -> None:
    """InputError for an ITK text transform file that lists several transforms one after the
    other (not as one composite): SimpleITK would read the first and drop the rest silently."""
    if path.suffix.lower() not in (".tfm", ".txt"):
        return
    try:
        with path.open(encoding="utf-8", errors="replace") as handle:
            kinds = [line.split(":", 1)[1].strip() for line in handle if line.startswith("Transform:")]
    except OSError:
        return  # the reader reports it
    if len(kinds) > 1 and not kinds[0].startswith("CompositeTransform"):
        raise InputError(f"initial transform {path} holds {len(kinds)} transforms one after the other "
                         f"({', '.join(kinds)}); only the first would be used: give one transform, or their "
                         "composition as one CompositeTransform")


def read_initial_transform(path: PathLike) -> sitk.AffineTransform:
    """Read an ITK linear transform file (.tfm, .txt, .h5/.hdf5, .mat) as one affine transform.

    ITK transform files store the **resampling** direction: the transform maps points of the
    fixed image (LPS mm) to points of the moving image (``sitk.Resample(moving, fixed, T)``
    aligns the moving image) -- what elastix, ANTs (``*GenericAffine.mat``) and 3D Slicer
    (which writes the "FromParent" transform converted to LPS) save. Translation, Euler/versor
    rigid, similarity, scale-skew, affine and composites of those are accepted.

    Raises :class:`InputError` when the file is missing, unreadable or not a 3-D linear transform.
    """
    path = Path(path)
    if path.is_dir():
        raise InputError(f"initial transform {path} is a folder; give the transform file (.tfm, .txt, .h5, .hdf5 or .mat)")
    if not path.is_file():
        raise InputError(f"initial transform file not found: {path}")
    _refuse_several_transforms(path)
    try:
        transform = sitk.ReadTransform(str(path))
    except RuntimeError as error:
        message = itk_message(error)
        if "suffix" in message:  # ITK's words for a file type no transform reader knows
            message = "not an ITK transform file (.tfm, .txt, .h5, .hdf5 or .mat)"
        raise InputError(f"cannot read initial transform {path}: {message}") from None
    return linear_to_affine(transform, f"initial transform {path}")
