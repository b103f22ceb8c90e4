"""``register()``: the whole VoxelOpt registration of two images, from inputs to outputs.

Steps and grids (all share the fixed image's box and direction; see :mod:`voxelopt.geometry`):

1. the inputs are checked and the grids built (:mod:`voxelopt.inputs`, no torch): the *fixed
   grid* (the fixed image as given), the *feature grid* (the fixed box at ``feature_spacing`` mm,
   paper: 2 mm) and the *working grid* (the feature grid scaled by ``working_scale``, paper: 4 mm);
2. the initial alignment is found (``init``; the affine stage runs in a background thread while
   torch is imported and the fixed image's features are computed, as they do not depend on it);
   both images are resampled onto the feature grid (the moving one through the initial
   alignment), features are computed there and moved to the working grid;
3. the pyramid solver runs from the working grid down to ``levels`` coarser grids, then the
   optional continuous refinement (on in the default preset);
4. the final field (LPS mm, resampling direction) is kept on the working grid; the Jacobian is
   computed there, the entropy stays on the working grid, and with labels the moving labels are
   warped onto the fixed grid (streamed) and scored. The warped image is computed on demand
   (:attr:`RegistrationResult.warped`, :meth:`RegistrationResult.save`).
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import threading
import time
import warnings
from typing import TYPE_CHECKING, Any, Callable, Dict, Iterator, Optional, Tuple, Union

import numpy as np

from . import compiled, voxels
from .allocator import release_free_memory
from .config import DEFAULT_PRESET, RegistrationConfig
from .digest import DigestMemo
from .errors import ConfigError, InputWarning, RegistrationCancelled
from .inputs import align, check_inputs, checked_labels, input_warnings
from .io import ImageLike, PathLike
from .result import RegistrationResult

if TYPE_CHECKING:  # the cache needs torch, which is imported only once the inputs are checked
    import SimpleITK as sitk

    from .cache import FeatureCache

ProgressCallback = Callable[[float, str], None]
CancelCallback = Callable[[], bool]

# Fractions of the progress bar: features up to 0.2, the pyramid up to 0.85, outputs to 1.0.
_FEATURES_DONE, _LEVELS_DONE = 0.2, 0.85


class _Deferred:
    """``function(*args)``, run in a thread when ``background`` (else at once, so that its errors
    are raised at once); :meth:`result` waits for it and returns its value or raises its
    exception. Not a daemon thread: a process that stops meanwhile (cancel, Ctrl-C) waits for it
    at exit, as a daemon thread killed inside ITK aborts the process ("exception not rethrown")."""

    def __init__(self, background: bool, function: Callable[..., Any], *args: Any):
        self._value: Any = None
        self._error: Optional[BaseException] = None
        self._thread: Optional[threading.Thread] = None
        if not background:
            self._value = function(*args)
            return
        self._thread = threading.Thread(target=self._run, args=(function, args), name="voxelopt-background")
        self._thread.start()

    def _run(self, function: Callable[..., Any], args: Tuple[Any, ...]) -> None:
        try:
            self._value = function(*args)
        except BaseException as error:  # handed to the caller of result()
            self._error = error

    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def result(self, poll: Optional[Callable[[], None]] = None) -> Any:
        """The value; ``poll`` is called every 0.1 s while waiting (it may raise, e.g. to cancel:
        the thread then finishes on its own and its result is dropped)."""
        while self._thread is not None and self._thread.is_alive():
            if poll is not None:
                poll()
            self._thread.join(0.1)
        if self._error is not None:
            raise self._error
        return self._value


def _check_call_arguments(progress: Any, cancel: Any, cache: Any) -> None:
    """ConfigError for a ``progress`` or ``cancel`` that is not a function, or a ``cache`` that is not a
    :class:`FeatureCache` (checked without importing torch: a FeatureCache exists only once
    ``voxelopt.cache`` is imported)."""
    for name, value, called in (("progress", progress, "progress(fraction, message)"), ("cancel", cancel, "cancel()")):
        if value is not None and not callable(value):
            raise ConfigError(f"{name} must be a function, called as {called}, or None; got {type(value).__name__}")
    cache_module = sys.modules.get(f"{__package__}.cache")
    if cache is not None and (cache_module is None or not isinstance(cache, cache_module.FeatureCache)):
        raise ConfigError(f"cache must be a voxelopt.FeatureCache (e.g. voxelopt.FeatureCache()) or None; got "
                          f"{type(cache).__name__}")


@voxels.stable_views()
def register(
    fixed: ImageLike,
    moving: ImageLike,
    config: Optional[RegistrationConfig] = None,
    fixed_labels: Optional[ImageLike] = None,
    moving_labels: Optional[ImageLike] = None,
    progress: Optional[ProgressCallback] = None,
    cancel: Optional[CancelCallback] = None,
    cache: Optional["FeatureCache"] = None,
    initial_transform: Optional[Union["sitk.Transform", PathLike]] = None,
    fixed_mask: Optional[ImageLike] = None,
    moving_mask: Optional[ImageLike] = None,
    warp_moving: bool = False,
) -> RegistrationResult:
    """Register ``moving`` onto ``fixed`` with VoxelOpt.

    Args:
        fixed, moving: 3-D scalar CT images (SimpleITK images, file paths, folders holding one
            DICOM series each, or :class:`voxelopt.io.ArrayImage`), intensities in HU, any size,
            spacing and direction.
        config: parameters (default: the :data:`~voxelopt.config.DEFAULT_PRESET` preset, ``abdomen``).
        fixed_labels, moving_labels: optional label maps of the images (integers, 0 =
            background); resampled with nearest neighbour onto their image's grid when their
            geometry differs. With both, Dice and HD95 are computed (see :mod:`voxelopt.metrics`).
        progress: called as ``progress(fraction, message)`` with fraction in [0, 1].
        cancel: polled between steps (also between slabs of the outputs); when it returns True
            the call raises :class:`RegistrationCancelled` and returns nothing.
        cache: a :class:`FeatureCache` reused across calls (features are recomputed only when
            an image or a feature parameter changes; the affine initial alignment and the scores
            before registration once per pair).
        initial_transform: a linear SimpleITK transform or an ITK transform file (.tfm/.txt/.h5/.mat)
            mapping fixed points to moving points (LPS mm): the initial alignment with
            ``init="none"``, the starting point of ``init="affine"``.
        fixed_mask, moving_mask: optional masks of the images (label maps on their image's grid,
            nonzero = use the voxel in the cost), e.g. to leave out a tumour, metal or the table;
            combined with the scanned-region mask (``config.padding_mask``).
        warp_moving: warp the moving image onto the fixed grid in the outputs stage, beside the
            label scores after registration (whose single-core parts leave a core idle), instead
            of on first use of :attr:`RegistrationResult.warped`: for a caller that writes or
            shows the warped image (the command line when it writes ``warped``, the Slicer
            module with a warped volume). The result is the same.

    Returns:
        A :class:`RegistrationResult`: the displacement field in LPS mm on the working grid with
        ``warped(x) = moving(x + field(x))``, the entropy and Jacobian maps, the warped labels,
        metrics and per-stage timings; the warped image on demand.

    Raises:
        InputError: unusable images (not 3-D, multi-component, NaN/Inf, bad geometry, too
            small for the pyramid, no overlap, labels off their image), or a registration that
            would not fit in the device's free memory.
        ConfigError: invalid parameters, unavailable device, or a ``progress``, ``cancel`` or
            ``cache`` of the wrong kind.
        RegistrationCancelled: ``cancel()`` returned True.
    """
    config = config if config is not None else RegistrationConfig.preset(DEFAULT_PRESET)
    if not isinstance(config, RegistrationConfig):
        raise ConfigError(f"config must be a RegistrationConfig (e.g. RegistrationConfig.preset('{DEFAULT_PRESET}')"
                          f".replace(alpha=2.0)), got {type(config).__name__}")
    _check_call_arguments(progress, cancel, cache)
    report = progress or (lambda fraction, message: None)
    timer = _StageTimer(time.perf_counter)

    def check_cancel() -> None:
        if cancel is not None and cancel():
            raise RegistrationCancelled("registration cancelled")

    with timer.stage("prepare"):
        checked = check_inputs(fixed, moving, config, fixed_mask, moving_mask)
        fixed_lab = checked_labels(fixed_labels, checked.fixed, "fixed labels")
        moving_lab = checked_labels(moving_labels, checked.moving, "moving labels")
        notes = input_warnings(checked.fixed, checked.moving, config.hu_window)
        if fixed_lab is not None and moving_lab is None:
            notes.append("fixed labels were given without moving labels: nothing is scored (Dice and HD95 compare "
                         "the warped moving labels with the fixed labels)")
        for note in notes:
            warnings.warn(note, InputWarning, stacklevel=2)
        # The affine stage (SimpleITK on one thread, which releases the GIL) runs in the background
        # while torch is imported and the fixed image's features, which do not depend on the
        # alignment, are computed; any other alignment is quick and done at once, so that its
        # errors come before torch is imported, as every input error above does.
        # each image's digest once (never for the cache's constant images), for every cache key
        digest = DigestMemo(cache.constant_images if cache is not None else None)
        alignment = _Deferred(config.init == "affine", align, checked, config, initial_transform, cache, digest)
        from .device import make_clock, one_core_left, resolve_device
        from .features import make_extractor
        from .solver import solve_pyramid
        from .peak_memory import check_memory
        from .stages import cost_masks, solved_outputs, working_features

        device = resolve_device(config.device)
        timer.clock = make_clock(device)
        extractor = make_extractor(config)
        check_memory(checked, config, device, moving_lab is not None)
    check_cancel()

    report(0.0, "features")
    with timer.stage("features_fixed"), one_core_left(device.type == "cpu" and alignment.running() and not extractor.heavy):
        fixed_features = working_features(checked, "fixed", extractor, device, cache, digest,
                                          config.padding_mask)
    check_cancel()
    with timer.stage("alignment"):  # the rest of the initial alignment, if it is still running
        if alignment.running():
            report(_FEATURES_DONE / 2, "affine alignment")
        if moving_lab is not None or warp_moving:
            # the outputs' compiled kernels are loaded once per process (about 0.45 s on one core):
            # here, on a thread beside the cost masks, which leave a core idle (512x512x600: the
            # outputs stage 0.3 s shorter, this one 0.2 s longer; see compiled.warm_up)
            _Deferred(True, compiled.warm_up, math.prod(checked.fixed.GetSize()))
        prepared = alignment.result(poll=check_cancel)
        masks = cost_masks(prepared, config, device, prepared.fixed_use, prepared.moving_use, cache, digest)
    check_cancel()
    report(_FEATURES_DONE / 2, "features")
    with timer.stage("features_moving"):
        moving_features = working_features(prepared, "moving", extractor, device, cache, digest,
                                           config.padding_mask)
    check_cancel()
    report(_FEATURES_DONE, "features done")

    def on_level(done: int, total: int) -> None:
        report(_FEATURES_DONE + (_LEVELS_DONE - _FEATURES_DONE) * done / total, f"pyramid level {done}/{total}")

    with timer.stage("solver"):
        solved = solve_pyramid(moving_features, fixed_features, config, on_level, check_cancel, timer.clock,
                               fixed_mask=masks.fixed, moving_mask=masks.moving, fixed_thickness=masks.fixed_thickness)
    del fixed_features, moving_features
    release_free_memory()  # the full-grid outputs do not fit in the features' freed blocks
    check_cancel()

    report(_LEVELS_DONE, "outputs")
    with timer.stage("outputs"):
        outputs = solved_outputs(
            solved, prepared, fixed_lab, moving_lab, cache, digest,
            lambda fraction, message: report(_LEVELS_DONE + (1 - _LEVELS_DONE) * fraction, message),
            lambda: cancel is not None and bool(cancel()),
            warp_moving=warp_moving,
        )
    if fixed_lab is not None and moving_lab is not None and not outputs["metrics"].get("labels"):
        notes.append("no label value is in both the fixed and the moving labels, so nothing was scored (Dice and "
                     "HD95 are nan): the two label maps must use the same numbers for the same structures")
        warnings.warn(notes[-1], InputWarning, stacklevel=2)
    report(1.0, "registered")
    return RegistrationResult(
        field=outputs["field"].to_image(),
        entropy=outputs["entropy"],
        jacobian=outputs["jacobian"],
        warped_labels=outputs["warped_labels"],
        metrics=outputs["metrics"],
        timings=_timings(timer.seconds, solved, outputs["warp_seconds"]),
        config=config,
        device=str(device),
        initial_transform=tuple(tuple(float(v) for v in row) for row in prepared.initial),
        fixed_grid=prepared.fixed_grid,
        moving=prepared.moving,
        grid_field=outputs["field"],
        _warped=outputs["warped"],
        warnings=notes,
        masks={side: float(np.count_nonzero(use)) / use.size for side, use in (
            ("fixed", checked.fixed_use), ("moving", checked.moving_use)) if use is not None},
        input_files=tuple(str(value) for value in (fixed, moving, fixed_labels, moving_labels, fixed_mask, moving_mask,
                                                   initial_transform) if isinstance(value, (str, os.PathLike))),
    )


def _timings(stages: Dict[str, float], solved, warp_seconds: Optional[float]) -> Dict[str, float]:
    """Stage seconds in order, the solver followed by its parts (levels, refinement), the total,
    and the moving image's warp when the outputs stage made it (a part of ``outputs``)."""
    out: Dict[str, float] = {}
    for name, seconds in stages.items():
        out[name] = seconds
        if name == "solver":
            out.update({f"level_{i}": s for i, s in enumerate(solved.level_seconds, start=1)})
            if solved.refine_seconds is not None:
                out["refine"] = solved.refine_seconds
    out["total"] = sum(stages.values())
    if warp_seconds is not None:
        out["warp"] = warp_seconds
    return out


class _StageTimer:
    """Accumulates wall-clock seconds per named stage (``clock`` may be replaced by a CUDA-aware one)."""

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
