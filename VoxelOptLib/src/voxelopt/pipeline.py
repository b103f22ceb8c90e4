"""``register()``: the whole VoxelOpt registration of two images, from inputs to outputs.

Steps and grids (all share the fixed image's box and direction; see :mod:`voxelopt.geometry`):

1. the *fixed grid*: the fixed image as given; every output lives on it;
2. the *feature grid*: the fixed box at ``feature_spacing`` mm (paper: 2 mm); both images are
   resampled onto it (the moving one through the initial translation) and features computed;
3. the *working grid*: the feature grid scaled by ``working_scale`` (paper: 0.5, 4 mm); the
   pyramid solver runs from there down to ``levels`` coarser grids;
4. the final voxel field becomes a mm field, is interpolated onto the fixed grid and is used to
   warp the moving image and labels, and to compute the Jacobian and the metrics.
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Callable, Dict, Iterator, Optional, Tuple

import numpy as np
import SimpleITK as sitk
import torch

from .cache import FeatureCache, image_digest
from .config import RegistrationConfig
from .device import make_clock, resolve_device
from .errors import InputError, RegistrationCancelled
from .features import FeatureExtractor, make_extractor
from .geometry import (
    Grid,
    check_image,
    image_to_tensor,
    mm_field_to_image,
    mm_to_voxel_field,
    overlap_fraction,
    resample_image,
    resample_through_field,
    resize_volume,
    tensor_to_image,
    voxel_to_mm_field,
)
from .io import ImageLike, as_image
from .masks import user_mask, working_mask
from .metrics import jacobian_determinant, jacobian_statistics, label_metrics
from .result import RegistrationResult
from .solver import level_shapes, solve_pyramid

ProgressCallback = Callable[[float, str], None]
CancelCallback = Callable[[], bool]

#: Registration refuses pairs whose fields of view overlap less than this after alignment.
MIN_OVERLAP = 0.05

# Fractions of the progress bar: features up to 0.2, the pyramid up to 0.9, outputs to 1.0.
_FEATURES_DONE, _LEVELS_DONE = 0.2, 0.9


def register(
    fixed: ImageLike,
    moving: ImageLike,
    config: Optional[RegistrationConfig] = None,
    fixed_labels: Optional[ImageLike] = None,
    moving_labels: Optional[ImageLike] = None,
    progress: Optional[ProgressCallback] = None,
    cancel: Optional[CancelCallback] = None,
    cache: Optional[FeatureCache] = None,
    fixed_mask: Optional[ImageLike] = None,
    moving_mask: Optional[ImageLike] = None,
) -> RegistrationResult:
    """Register ``moving`` onto ``fixed`` with VoxelOpt.

    Args:
        fixed, moving: 3-D scalar CT images (SimpleITK images, file paths, or
            :class:`voxelopt.io.ArrayImage`), intensities in HU, any size, spacing and direction.
        config: parameters (default: the ``paper`` preset).
        fixed_labels, moving_labels: optional label maps of the images (integers, 0 =
            background); resampled with nearest neighbour onto their image's grid when their
            geometry differs. With both, Dice and HD95 are computed.
        progress: called as ``progress(fraction, message)`` with fraction in [0, 1].
        cancel: polled between steps; when it returns True the call raises
            :class:`RegistrationCancelled` and returns nothing.
        cache: a :class:`FeatureCache` reused across calls (features are recomputed only when
            an image or a feature parameter changes).
        fixed_mask, moving_mask: optional masks of the images (label maps on their image's
            grid, nonzero = use the voxel in the cost), e.g. to leave out a tumour, metal or the
            table; combined with the scanned-region mask (``config.padding_mask``).

    Returns:
        A :class:`RegistrationResult`: the displacement field in LPS mm on the fixed grid with
        ``warped(x) = moving(x + field(x))``, the warped image and labels, entropy and Jacobian
        maps, metrics and per-stage timings.

    Raises:
        InputError: unusable images (not 3-D, multi-component, NaN/Inf, bad geometry, too
            small for the pyramid, no overlap).
        ConfigError: invalid parameters or unavailable device.
        RegistrationCancelled: ``cancel()`` returned True.
    """
    config = config if config is not None else RegistrationConfig.preset("paper")
    device = resolve_device(config.device)
    clock = make_clock(device)
    timer = _StageTimer(clock)
    report = progress or (lambda fraction, message: None)

    def check_cancel() -> None:
        if cancel is not None and cancel():
            raise RegistrationCancelled("registration cancelled")

    with timer.stage("prepare"):
        prepared = prepare(fixed, moving, config)
        fixed_lab = _checked_labels(fixed_labels, prepared.fixed, "fixed labels")
        moving_lab = _checked_labels(moving_labels, prepared.moving, "moving labels")
        extractor = make_extractor(config)
        fixed_cost_mask, moving_cost_mask = cost_masks(prepared, config, device, fixed_mask, moving_mask)
    check_cancel()

    report(0.0, "features")
    with timer.stage("features_fixed"):
        fixed_features = working_features(prepared, "fixed", extractor, device, cache)
    check_cancel()
    report(_FEATURES_DONE / 2, "features")
    with timer.stage("features_moving"):
        moving_features = working_features(prepared, "moving", extractor, device, cache)
    check_cancel()
    report(_FEATURES_DONE, "features done")

    def on_level(done: int, total: int) -> None:
        report(_FEATURES_DONE + (_LEVELS_DONE - _FEATURES_DONE) * done / total, f"pyramid level {done}/{total}")

    with timer.stage("solver"):
        solved = solve_pyramid(moving_features, fixed_features, config, on_level, check_cancel, clock,
                               fixed_mask=fixed_cost_mask, moving_mask=moving_cost_mask)
    check_cancel()

    with timer.stage("outputs"):
        outputs = _outputs(solved, prepared, fixed_lab, moving_lab, device)
    report(1.0, "done")
    return RegistrationResult(
        config=config,
        device=str(device),
        initial_translation_mm=tuple(float(v) for v in prepared.translation),
        timings=_timings(timer.seconds, solved),
        **outputs,
    )


def _timings(stages: Dict[str, float], solved) -> Dict[str, float]:
    """Stage seconds in order, the solver followed by its parts (levels, refinement), and the total."""
    out: Dict[str, float] = {}
    for name, seconds in stages.items():
        out[name] = seconds
        if name == "solver":
            out.update({f"level_{i}": s for i, s in enumerate(solved.level_seconds, start=1)})
            if solved.refine_seconds is not None:
                out["refine"] = solved.refine_seconds
    out["total"] = sum(stages.values())
    return out


# ====================================================================== inputs
def _checked_image(image: ImageLike, what: str) -> sitk.Image:
    image = as_image(image, what)
    check_image(image, what)
    image = sitk.Cast(image, sitk.sitkFloat32) if image.GetPixelID() != sitk.sitkFloat32 else image
    values = sitk.GetArrayViewFromImage(image)
    if not np.isfinite(values).all():
        bad = int(np.count_nonzero(~np.isfinite(values)))
        raise InputError(f"{what} contains {bad} NaN or infinite voxel(s); fix or mask them before registering")
    return image


def _checked_labels(labels: Optional[ImageLike], image: sitk.Image, what: str) -> Optional[sitk.Image]:
    if labels is None:
        return None
    labels = as_image(labels, what)
    check_image(labels, what)
    values = sitk.GetArrayViewFromImage(labels)
    if not np.isfinite(values).all() or not np.array_equal(values, np.round(values)) or values.min() < 0:
        raise InputError(f"{what} must hold non-negative integer labels")
    labels = sitk.Cast(labels, sitk.sitkInt32)
    return resample_image(labels, Grid.from_image(image), interpolator=sitk.sitkNearestNeighbor, default=0)


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
    low, high = window
    step = 2  # every 2nd voxel per axis is plenty for a centre of mass
    weights = np.clip((sitk.GetArrayViewFromImage(image)[::step, ::step, ::step] - low) / (high - low), 0.0, 1.0)
    total = weights.sum()
    grid = Grid.from_image(image)
    if total <= 0:
        return grid.center()
    zyx = [np.arange(0, n, step) for n in grid.shape]
    index_zyx = [float((weights.sum(axis=tuple(a for a in range(3) if a != axis)) * zyx[axis]).sum() / total)
                 for axis in range(3)]
    index_ijk = np.asarray(index_zyx[::-1])
    return np.asarray(grid.origin) + grid.index_to_physical @ index_ijk


@dataclasses.dataclass(frozen=True)
class PreparedPair:
    """Checked float32 images and the grids of one registration (see the module docstring).

    ``translation`` (mm) is the initial alignment: fixed point x corresponds to moving point x + t.
    """

    fixed: sitk.Image
    moving: sitk.Image
    fixed_grid: Grid
    moving_grid: Grid
    feature_grid: Grid
    working_grid: Grid
    translation: np.ndarray


def prepare(fixed: ImageLike, moving: ImageLike, config: RegistrationConfig) -> PreparedPair:
    """Check the images, build the grids, find the initial alignment and check the overlap."""
    fixed_image = _checked_image(fixed, "fixed image")
    moving_image = _checked_image(moving, "moving image")
    fixed_grid = Grid.from_image(fixed_image)
    feature_grid = fixed_grid.with_spacing(config.feature_spacing) if config.feature_spacing else fixed_grid
    working_grid = feature_grid.scaled(config.working_scale)
    level_shapes(working_grid.shape, config.levels)  # fail fast if the image is too small
    translation = initial_translation(fixed_image, moving_image, config.init, config.hu_window)
    overlap = overlap_fraction(fixed_grid, moving_image, translation)
    if overlap < MIN_OVERLAP:
        raise InputError(
            f"the fixed and moving images do not overlap after '{config.init}' alignment "
            f"({100 * overlap:.1f}% of the fixed image lies inside the moving one, need {100 * MIN_OVERLAP:.0f}%); "
            "try init='centers' or 'com', or check the image headers"
        )
    return PreparedPair(fixed_image, moving_image, fixed_grid, Grid.from_image(moving_image), feature_grid,
                        working_grid, translation)


def working_features(prepared: PreparedPair, which: str, extractor: FeatureExtractor, device: torch.device,
                     cache: Optional[FeatureCache] = None) -> torch.Tensor:
    """(1, C, Z, Y, X) features of the ``"fixed"`` or ``"moving"`` image on the working grid.

    The image is resampled onto the feature grid (the moving one through the initial
    translation; outside the image: its darkest value, i.e. air), the extractor runs there, and
    the result is resized to the working grid. Cached in ``cache`` when one is given.
    """
    image = prepared.fixed if which == "fixed" else prepared.moving
    t = None if which == "fixed" or not np.any(prepared.translation) else tuple(float(v) for v in prepared.translation)
    feature_grid, working_grid = prepared.feature_grid, prepared.working_grid

    def compute() -> torch.Tensor:
        default = float(sitk.GetArrayViewFromImage(image).min())
        on_grid = resample_image(image, feature_grid, t, sitk.sitkLinear, default)
        features = extractor.extract(on_grid, device)[None]
        return resize_volume(features, working_grid.shape).contiguous()

    if cache is None:
        return compute()
    key = ("features", image_digest(image), feature_grid, working_grid, t, extractor.cache_key(), str(device))
    return cache.get_or_compute(key, compute, device)


def cost_masks(prepared: PreparedPair, config: RegistrationConfig, device: torch.device,
               fixed_mask: Optional[ImageLike] = None, moving_mask: Optional[ImageLike] = None
               ) -> Tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
    """The solver's (fixed, moving) cost masks on the working grid (see :mod:`voxelopt.masks`)."""
    t = None if not np.any(prepared.translation) else tuple(float(v) for v in prepared.translation)
    grids = (prepared.feature_grid, prepared.working_grid, device, config.padding_mask)
    return (working_mask(prepared.fixed, *grids, user_mask(fixed_mask, prepared.fixed, "fixed mask")),
            working_mask(prepared.moving, *grids, user_mask(moving_mask, prepared.moving, "moving mask"), t))


# ====================================================================== outputs
def _outputs(solved, prepared: PreparedPair, fixed_labels: Optional[sitk.Image], moving_labels: Optional[sitk.Image],
             device: torch.device) -> Dict[str, object]:
    fixed_grid, moving_grid, working_grid = prepared.fixed_grid, prepared.moving_grid, prepared.working_grid
    translation, moving_image = prepared.translation, prepared.moving
    d_work = voxel_to_mm_field(solved.field, working_grid)
    d_work += torch.as_tensor(translation, dtype=d_work.dtype, device=device).view(1, 3, 1, 1, 1)
    d_full = resize_volume(d_work, fixed_grid.shape)
    del d_work

    moving_t = image_to_tensor(moving_image, device)
    default = float(moving_t.min())
    warped = resample_through_field(moving_t, moving_grid, fixed_grid, d_full, "bilinear", default)
    del moving_t

    jac = jacobian_determinant(mm_to_voxel_field(d_full, fixed_grid))
    jac_np = jac.cpu().numpy()
    metrics: Dict[str, object] = dict(jacobian_statistics(jac_np))

    warped_labels_image = None
    if moving_labels is not None:
        labels_t = image_to_tensor(moving_labels, device)
        warped_labels = resample_through_field(labels_t, moving_grid, fixed_grid, d_full, "nearest", 0.0)
        warped_labels_image = tensor_to_image(warped_labels.round(), fixed_grid, sitk.sitkInt32)
        if fixed_labels is not None:
            fixed_np = sitk.GetArrayFromImage(fixed_labels)
            spacing_zyx = fixed_grid.spacing[::-1]
            metrics.update(label_metrics(fixed_np, sitk.GetArrayFromImage(warped_labels_image), spacing_zyx))
            initial = resample_image(moving_labels, fixed_grid, interpolator=sitk.sitkNearestNeighbor, default=0)
            before = label_metrics(fixed_np, sitk.GetArrayViewFromImage(initial), spacing_zyx, metrics["labels"])
            metrics["dice_initial_mean"] = before["dice_mean"]
            metrics["hd95_mm_initial_mean"] = before["hd95_mm_mean"]

    entropy = resize_volume(solved.entropy[None, None], fixed_grid.shape)
    return {
        "field": mm_field_to_image(d_full, fixed_grid),
        "warped": tensor_to_image(warped, fixed_grid, sitk.sitkFloat32),
        "warped_labels": warped_labels_image,
        "entropy": tensor_to_image(entropy, fixed_grid, sitk.sitkFloat32),
        "jacobian": tensor_to_image(jac, fixed_grid, sitk.sitkFloat32),
        "metrics": metrics,
    }


class _StageTimer:
    """Accumulates wall-clock seconds per named stage."""

    def __init__(self, clock: Callable[[], float]):
        self.clock = clock
        self.seconds: Dict[str, float] = {}

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        start = self.clock()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + self.clock() - start
