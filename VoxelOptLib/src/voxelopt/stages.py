"""The torch stages of a registration: features on the working grid, cost masks, and the outputs
computed after the solver (see :mod:`voxelopt.pipeline` for the order, and
:mod:`voxelopt.outputs` for where each output lives; the memory check before them:
:mod:`voxelopt.peak_memory`).
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Dict, NamedTuple, Optional, Tuple, Union

import numpy as np
import SimpleITK as sitk
import torch

from .cache import FeatureCache
from .digest import Digest, image_digest
from .errors import ConfigError
from .config import RegistrationConfig
from .features import FeatureExtractor
from .geometry import resample_image, tensor_to_image
from .inputs import CheckedPair, PreparedPair
from .masks import scanned_thickness, working_mask
from .metrics import LabelScorer, jacobian_statistics, with_initial_scores
from .outputs import GridField, aligned_labels, warp_image
from .solver.pyramid import Thickness
from . import voxels


def working_features(prepared: Union[CheckedPair, PreparedPair], which: str, extractor: FeatureExtractor,
                     device: torch.device, cache: Optional[FeatureCache] = None,
                     digest: Digest = image_digest, padding_mask: bool = True) -> torch.Tensor:
    """(1, C, Z, Y, X) features of the ``"fixed"`` or ``"moving"`` image on the working grid
    (the fixed image's need no alignment: a :class:`CheckedPair` will do).

    The image is resampled onto the feature grid (the moving one through the initial alignment),
    the extractor runs there, and the result is resized to the working grid. Beyond the image's
    grid (a moving scan that ends inside the fixed one) the image is continued by its border
    planes when ``padding_mask`` is on, so the features near the end of a partial scan see the
    anatomy go on rather than an artificial edge to air (the cost masks leave the voxels beyond
    the grid out either way; measured on A -> Adef with the moving cut in half, ``abdomen``: mean
    error within 10 mm of the cut 9.7-10.4 -> 2.2-2.6 mm, ``benchmarks/partial_moving.py``); with
    ``padding_mask`` off it is filled with its darkest value (air). Cached in ``cache`` when
    one is given.
    """
    image = prepared.fixed if which == "fixed" else prepared.moving
    initial = np.eye(4) if which == "fixed" else prepared.initial
    feature_grid, working_grid = prepared.feature_grid, prepared.working_grid
    continued = bool(padding_mask)

    def compute() -> torch.Tensor:
        # the fill value for points outside the image: unused when it is continued (no pass over its voxels then)
        default = 0.0 if continued else float(voxels.view(image).min())
        on_grid = resample_image(image, feature_grid, initial, sitk.sitkLinear, default, sitk.sitkFloat32,
                                 extrapolate=continued)
        features = extractor.extract_resized(on_grid, device, working_grid.shape)
        if not bool(torch.isfinite(features).all()):  # the solver would turn them into a NaN field
            raise ConfigError(f"the {which} image's '{extractor.name}' features hold NaN or Inf values, so there is "
                              "nothing to register with: a network model or weights that compute them so are broken; "
                              "choose other features or weights (image values beyond float32's range do it too)")
        return features

    if cache is None:
        return compute()
    key = ("features", digest(image), feature_grid, working_grid, _alignment_key(initial), extractor.cache_key(),
           str(device), continued)
    expected = tuple(working_grid.shape)
    return cache.get_or_compute(key, compute, device, valid=lambda features: (
        features.dim() == 5 and tuple(features.shape[2:]) == expected and features.is_floating_point()
        and bool(torch.isfinite(features).all())))


class CostMasks(NamedTuple):
    """What the solver is told of the images' scanned regions (see :mod:`voxelopt.masks`)."""

    fixed: Optional[torch.Tensor]  # (1, 1, Z, Y, X) weights on the working grid, None: all 1
    moving: Optional[torch.Tensor]  # the same for the moving image, in the fixed space
    fixed_thickness: Thickness  # per array axis, :func:`voxelopt.masks.scanned_thickness`


def cost_masks(prepared: PreparedPair, config: RegistrationConfig, device: torch.device,
               fixed_mask: Optional[np.ndarray] = None, moving_mask: Optional[np.ndarray] = None,
               cache: Optional[FeatureCache] = None, digest: Digest = image_digest) -> CostMasks:
    """The solver's cost masks on the working grid and the fixed image's scanned thickness (all 1
    without ``config.padding_mask``); ``fixed_mask``/``moving_mask`` are the user's masks as
    checked by :func:`voxelopt.masks.user_mask`. Without a user mask, each image's mask (and the
    fixed image's thickness with it) is kept in ``cache`` (when given) for its image's content,
    grids, alignment and HU window: a re-run with other solver parameters does not scan the images
    again (0.24-0.26 s and 0.05 s at 512x512x600)."""
    grids = (prepared.feature_grid, prepared.working_grid, device, config.padding_mask)
    full: Thickness = (1.0, 1.0, 1.0)

    def mask(image: sitk.Image, user: Optional[np.ndarray], alignment: Optional[np.ndarray], fixed: bool
             ) -> Tuple[Optional[torch.Tensor], Thickness]:
        def compute() -> Tuple[Optional[torch.Tensor], Thickness]:
            weights = working_mask(image, *grids, user, alignment, config.hu_window[0])
            return weights, (scanned_thickness(voxels.view(image)) if fixed and config.padding_mask else full)

        if cache is None or user is not None or not config.padding_mask:
            return compute()
        key = ("cost mask", digest(image), prepared.feature_grid, prepared.working_grid, str(device),
               _alignment_key(alignment), config.hu_window[0], fixed)
        return cache.get_or_compute_value(key, compute, keep=4)

    fixed_weights, thickness = mask(prepared.fixed, fixed_mask, None, True)
    return CostMasks(fixed_weights, mask(prepared.moving, moving_mask, prepared.initial, False)[0], thickness)


def label_scorer(fixed_labels: sitk.Image, moving_labels: sitk.Image, cache: Optional[FeatureCache] = None,
                 digest: Digest = image_digest) -> LabelScorer:
    """Scores of warped labels against the fixed labels (the scoring module's rule), fixed side
    once; the last one is kept in ``cache`` for the next registration of the same label maps (its
    label counts and surface voxels: 0.44-0.49 s at 512x512x600)."""
    def compute() -> LabelScorer:
        view = voxels.view
        return LabelScorer(view(fixed_labels), view(moving_labels), fixed_labels.GetSpacing()[::-1])

    if cache is None:
        return compute()
    # kept with the fixed label map (the scorer reads its voxels through a view, which does not
    # keep the SimpleITK image alive); one at a time: it holds a full-grid label map
    scorer, _ = cache.get_or_compute_value(("label scorer", digest(fixed_labels), digest(moving_labels)),
                                           lambda: (compute(), fixed_labels), keep=1)
    return scorer


def initial_label_scores(prepared: PreparedPair, fixed_labels: sitk.Image, moving_labels: sitk.Image,
                         scorer: Callable[[], LabelScorer], cache: Optional[FeatureCache],
                         digest: Digest = image_digest) -> Dict[str, object]:
    """The scores before registration (labels through the initial alignment only), once per pair
    (kept on disk with the cache's directory: a command-line re-run does not repeat them).
    ``scorer()`` gives the scorer, asked for once the labels are resampled (it may still be
    being made on another thread)."""
    def compute() -> Dict[str, object]:
        aligned = aligned_labels(moving_labels, prepared.initial, prepared.fixed_grid)
        return scorer().score(aligned)

    if cache is None:
        return compute()
    key = ("initial scores", digest(fixed_labels), digest(moving_labels), _alignment_key(prepared.initial))
    return cache.get_or_compute_value(key, compute, on_disk=True, valid=lambda scores: isinstance(scores, dict) and all(
        name in scores for name in ("labels", "dice", "dice_mean", "hd95_mm", "hd95_mm_mean")))


def solved_outputs(
    solved,
    prepared: PreparedPair,
    fixed_labels: Optional[sitk.Image],
    moving_labels: Optional[sitk.Image],
    cache: Optional[FeatureCache],
    digest: Digest,
    progress: Callable[[float, str], None],
    cancel: Callable[[], bool],
    warp_moving: bool = False,
) -> Dict[str, object]:
    """Field on the field grid (see :class:`PreparedPair`), entropy (working grid), Jacobian map and statistics, and with
    labels the warped labels and their scores before and after; with ``warp_moving`` the warped
    moving image too (``"warped"``, else None), ``"warp_seconds"`` its warp's wall time.
    ``progress(fraction, message)`` through the warps."""
    if not bool(torch.isfinite(solved.field).all()):  # never written: readers take a NaN field for the identity
        raise ConfigError("the registration's field holds NaN or Inf values: the parameters are beyond the range in "
                          "which the solver's float32 arithmetic holds (e.g. extreme thetas, beta or sigmas)")
    field = GridField.from_solver(solved.field, prepared.working_grid, prepared.field_grid, prepared.initial)
    jacobian = field.jacobian()
    metrics: Dict[str, object] = dict(jacobian_statistics(jacobian.cpu().numpy()))
    warped_labels = warped = warp_seconds = None
    # of the progress: the warps first, then the label scores that run beside them are waited for
    # (at 512x512x600 up to a second after the warps); the label warp (nearest, in the labels'
    # box) costs about a third of the image's
    warps_share = 0.9 if moving_labels is not None and fixed_labels is not None else 1.0
    labels_share = 0.0 if moving_labels is None else warps_share * (0.3 if warp_moving else 1.0)
    # The scores (the fixed side, the labels through the initial alignment, the scores before and
    # after registration: resamplings and nearest-surface searches, parts of them on one core)
    # are computed on two threads beside the warps, filling the cores those leave idle
    # (512x512x600: the outputs 3.3-3.7 -> 2.8-3.2 s with the label warp; see the README).
    background = ThreadPoolExecutor(max_workers=2, thread_name_prefix="voxelopt-scores")
    try:
        after = None
        if moving_labels is not None:
            if fixed_labels is not None:
                scorer = background.submit(label_scorer, fixed_labels, moving_labels, cache, digest)
                before = background.submit(initial_label_scores, prepared, fixed_labels, moving_labels, scorer.result,
                                           cache, digest)
            warped_labels = warp_image(moving_labels, field, prepared.fixed_grid, nearest=True, default=0,
                                       progress=lambda fraction: progress(labels_share * fraction, "warping labels"),
                                       cancel=cancel)
            if fixed_labels is not None:  # beside the scores before and the image's warp
                labels_view = voxels.view(warped_labels)
                after = background.submit(lambda: scorer.result().score(labels_view))
        if warp_moving:
            start = time.perf_counter()
            warped = warp_image(prepared.moving, field, prepared.fixed_grid, nearest=False,
                                progress=lambda fraction: progress(labels_share + (warps_share - labels_share) * fraction,
                                                                   "warping the moving image"),
                                cancel=cancel)
            warp_seconds = time.perf_counter() - start
        if after is not None:
            progress(warps_share, "scoring labels (Dice, HD95)")
            metrics.update(with_initial_scores(after.result(), before.result()))
    finally:  # on cancel the scores finish on their own, unused
        background.shutdown(wait=False)
    return {"field": field, "entropy": tensor_to_image(solved.entropy.float(), prepared.working_grid),
            "jacobian": tensor_to_image(jacobian.float(), field.grid), "warped_labels": warped_labels,
            "warped": warped, "warp_seconds": warp_seconds, "metrics": metrics}


def _alignment_key(matrix: Optional[np.ndarray]) -> Optional[bytes]:
    """A cache key's part for a 4x4 alignment (None: none), rounded so that the same alignment
    computed again keys the same entry."""
    return None if matrix is None else np.asarray(matrix).round(9).tobytes()
