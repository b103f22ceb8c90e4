"""The result of a registration and how it is written to disk.

File names written by :meth:`RegistrationResult.save` are stable (scripts rely on them):
``field.<fmt>``, ``warped.<fmt>``, ``warped_labels.<fmt>`` (when labels were given),
``entropy.<fmt>``, ``jacobian.<fmt>`` and ``metrics.json``. Which of them are written is chosen
with ``outputs``; files of those names left in the folder by an earlier run are removed, so the
folder always describes one run; a file of the folder that is one of the run's inputs is never
replaced or removed (an error instead).
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple, Union

import numpy as np
import SimpleITK as sitk

from . import voxels
from .allocator import release_free_memory
from .config import RegistrationConfig
from .errors import InputError, require_flag
from .geometry import Grid, check_image
from .formats import (FIELD_FORMATS, FIELD_GRIDS, IMAGE_FORMATS, OUTPUTS, check_format, check_outputs,
                      every_output_file_name, output_file_names)
from .io import ImageLike, PathLike, as_image, json_safe, write_field, write_image
from .output_dir import atomic_output_dir


#: Pixel types :meth:`RegistrationResult.warp` takes: integer and real, scalar or vector (not complex).
_WARPABLE_PIXEL_TYPES = tuple(getattr(sitk, f"sitk{vector}{kind}") for vector in ("", "Vector") for kind in (
    "UInt8", "Int8", "UInt16", "Int16", "UInt32", "Int32", "UInt64", "Int64", "Float32", "Float64"))


@dataclasses.dataclass
class RegistrationResult:
    """Everything a registration produces.

    Attributes:
        field: the displacement field, an ITK displacement-field image (VectorFloat32 in memory; the
            files :meth:`save` writes hold 64-bit vectors, the only ones ITK's
            ``DisplacementFieldTransform`` accepts) on its own
            grid: the solver's *working grid* (the fixed image's box at ``feature_spacing *
            working_scale``: 4 mm by default; the fixed grid when that is coarser), where all its
            information is; (x, y, z) LPS millimetres, resampling direction
            ``warped(x) = moving(x + field(x))``; :meth:`field_image` gives it on the fixed grid.
        entropy: displacement entropy (nats) of the finest pyramid level, on the working grid;
            high = uncertain.
        jacobian: determinant of the Jacobian of ``x -> x + field(x)`` on the field's grid;
            <= 0 is folding.
        warped_labels: the moving labels resampled onto the fixed grid through the field
            (nearest neighbour, the labels' integer type), or None.
        metrics: Jacobian statistics (on the field's grid), and Dice / HD95 when both label maps
            were given (see :mod:`voxelopt.metrics`).
        timings: wall-clock seconds per stage (``prepare``, ``features_fixed``, ``alignment`` (the
            part of the initial alignment left after the fixed image's features, and the cost
            masks), ``features_moving``, ``solver`` (itself split into ``level_1`` (coarsest) ... and, when
            it ran, ``refine``), ``outputs``, ``total``; ``warp`` (the moving image's, a part of
            ``outputs`` when :func:`voxelopt.register` made it with ``warp_moving``) and ``write``
            once they ran).
        config: the parameters used.
        device: torch device the computation ran on.
        initial_transform: the initial alignment as a 4x4 matrix (LPS mm, fixed -> moving points;
            a translation unless ``init="affine"`` or an initial transform was given), included in
            ``field``.
        fixed_grid: the fixed image's grid, where :attr:`warped` lives.
        moving: the moving image (kept to compute :attr:`warped` on demand).
        warnings: what about the inputs may have spoiled the registration (see
            :class:`voxelopt.InputWarning`, also issued as Python warnings), in ``metrics.json``.
        input_files: the files :func:`voxelopt.register` read its inputs from (those given as
            paths), which :meth:`save` never replaces or removes.
        masks: for each user mask given (``"fixed"``, ``"moving"``), the fraction of its image's
            voxels it keeps in the cost (in ``metrics.json``, so that runs with and without a
            mask can be told apart).
    """

    field: sitk.Image
    entropy: sitk.Image
    jacobian: sitk.Image
    warped_labels: Optional[sitk.Image]
    metrics: Dict[str, Any]
    timings: Dict[str, float]
    config: RegistrationConfig
    device: str
    initial_transform: Tuple[Tuple[float, ...], ...]
    fixed_grid: Grid
    moving: sitk.Image
    grid_field: Any = dataclasses.field(default=None, repr=False)  # the field as a tensor (voxelopt.outputs.GridField)
    _warped: Optional[sitk.Image] = dataclasses.field(default=None, repr=False)
    warnings: List[str] = dataclasses.field(default_factory=list)
    input_files: Tuple[str, ...] = ()
    masks: Dict[str, float] = dataclasses.field(default_factory=dict)

    # ------------------------------------------------------------------ outputs on demand
    @voxels.stable_views()
    def warp(self, image: ImageLike, labels: bool = False, progress: Optional[Callable[[float], None]] = None,
             cancel: Optional[Callable[[], bool]] = None) -> sitk.Image:
        """Any image of the moving space (a SimpleITK image, an :class:`~voxelopt.io.ArrayImage` or
        a file path) resampled onto the fixed grid through the field.

        Trilinear (``labels=False``; outside the image: its minimum) or nearest neighbour
        (``labels=True``; outside: 0); the pixel type is kept, and an image with several components
        per voxel is warped like each component. Streamed in slabs. Raises
        :class:`~voxelopt.errors.InputError` for anything but a 3-D image.
        """
        from .outputs import GridField, warp_image

        labels = require_flag(labels, "labels")
        image = as_image(image, "image to warp")
        check_image(image, "image to warp", values=True, scalar=False)
        if image.GetPixelID() not in _WARPABLE_PIXEL_TYPES:
            raise InputError(f"image to warp has {image.GetPixelIDTypeAsString()} voxels; integer or real voxels "
                             "(one or several components) can be warped")
        if not self._reaches(image):
            raise InputError("image to warp does not overlap the region the field maps the fixed grid to: it is not "
                             "an image of the moving space (check its origin and direction), or the field would "
                             "give nothing but its background")

        if self.grid_field is None:
            from .device import resolve_device

            self.grid_field = GridField.from_image(self.field, resolve_device(self.device))
        return warp_image(image, self.grid_field, self.fixed_grid, nearest=labels, progress=progress, cancel=cancel)

    def _reaches(self, image: sitk.Image) -> bool:
        """Whether the field maps the fixed grid onto ``image`` (fixed -> moving, LPS mm), judged
        on a lattice of at most 32 of the field's points per axis, moved by the field, against
        ``image``'s box widened by the lattice's step: only an image clearly out of reach (another
        space) fails. A few thousand points: the whole field at 512x512x600 took 1.5 s."""
        field_grid = Grid.from_image(self.field)
        step = np.maximum(1, np.ceil(np.asarray(field_grid.size) / 32)).astype(int)  # (i, j, k)
        samples = voxels.view(self.field)[::step[2], ::step[1], ::step[0]]  # (Z, Y, X, 3)
        lattice = field_grid.lattice((0, 0, 0), step, samples.shape[2::-1])
        points = lattice.physical_points() + np.moveaxis(samples, -1, 0)  # (3, Z, Y, X)
        target = Grid.from_image(image)
        index = np.linalg.solve(target.index_to_physical, points.reshape(3, -1) - np.reshape(target.origin, (3, 1)))
        margin = np.reshape(0.5 + max(lattice.spacing) / np.asarray(target.spacing), (3, 1))  # voxels of image
        size = np.reshape(image.GetSize(), (3, 1))
        return bool(np.any(np.all((index >= -margin) & (index <= size - 1 + margin), axis=0)))

    @property
    def warped(self) -> sitk.Image:
        """The moving image on the fixed grid through the field (trilinear, the moving pixel type),
        computed on first use (:meth:`compute_warped`)."""
        return self.compute_warped()

    def compute_warped(self, progress: Optional[Callable[[float], None]] = None,
                       cancel: Optional[Callable[[], bool]] = None) -> sitk.Image:
        """:attr:`warped`, computed now if it is not yet (:func:`voxelopt.register` with
        ``warp_moving=True`` makes it during the registration), reporting ``progress(fraction)``
        and polling ``cancel`` between slabs: for a caller that computes on a worker thread and
        writes the result on another."""
        if self._warped is None:
            start = time.perf_counter()
            release_free_memory()  # before a full-grid array: see voxelopt.allocator
            self._warped = self.warp(self.moving, progress=progress, cancel=cancel)
            self.timings["warp"] = time.perf_counter() - start
        return self._warped

    def field_image(self, grid: str = "working") -> sitk.Image:
        """The field as an ITK displacement field (VectorFloat32, LPS mm) on its own grid
        (``"working"``) or on the full fixed grid (``"fixed"``, trilinear as ITK samples it)."""
        from .outputs import resample_map

        if grid not in FIELD_GRIDS:
            raise InputError(f"unknown field grid {grid!r}; choose one of {', '.join(FIELD_GRIDS)}")
        return self.field if grid == "working" else resample_map(self.field, self.fixed_grid, vector=True)

    def transform(self) -> sitk.DisplacementFieldTransform:
        """A SimpleITK transform of the field (sampled by ITK exactly as the library samples it)."""
        return sitk.DisplacementFieldTransform(sitk.Cast(self.field, sitk.sitkVectorFloat64))

    def __repr__(self) -> str:
        """One line: the field's grid, the scores and the time (:meth:`summary` has everything)."""
        size = "x".join(str(n) for n in self.field.GetSize())
        spacing = "x".join(f"{v:g}" for v in self.field.GetSpacing())
        parts = [f"field {size} at {spacing} mm"]
        for key, label in (("dice_mean", "dice_mean"), ("sdlogj", "sdlogj"), ("folding_percent", "folding %")):
            if isinstance(self.metrics.get(key), (int, float)):
                parts.append(f"{label} {self.metrics[key]:.3f}")
        if "total" in self.timings:
            parts.append(f"{self.timings['total']:.1f} s on {self.device}")
        if self.warnings:
            parts.append(f"{len(self.warnings)} warning(s)")
        return f"RegistrationResult({', '.join(parts)})"

    def summary(self) -> Dict[str, Any]:
        """The metrics, timings and parameters, as written to ``metrics.json``."""
        return json_safe({
            "metrics": self.metrics,
            "timings_s": self.timings,
            "config": self.config.to_dict(),
            "device": self.device,
            "initial_transform": [list(row) for row in self.initial_transform],
            "masks": dict(self.masks),
            "warnings": list(self.warnings),
        })

    # ------------------------------------------------------------------ writing
    @voxels.stable_views()
    def save(
        self,
        out_dir: PathLike,
        image_format: str = "nii.gz",
        field_format: str = "nii.gz",
        outputs: Union[None, str, Iterable[str]] = None,
        field_grid: str = "working",
        full_size_maps: bool = False,
        progress: Optional[Callable[[float, str], None]] = None,
        cancel: Optional[Callable[[], bool]] = None,
        inputs: Iterable[Optional[PathLike]] = (),
    ) -> Dict[str, Path]:
        """Write outputs into ``out_dir`` (all or nothing); returns the written paths by output name.

        Args:
            outputs: names from :data:`OUTPUTS`, or one name, or a comma-separated string as
                ``--outputs`` takes it (default: all; ``"labels"`` only when moving labels were
                given — asking for it without them is an error).
            field_grid: ``"working"`` (the field's own grid, default) or ``"fixed"``.
            full_size_maps: write the entropy and Jacobian maps on the fixed grid (trilinear)
                instead of their own grids.
            progress: ``progress(fraction, message)`` per output; ``cancel`` polled in between
                (True raises :class:`RegistrationCancelled`, nothing is written).
            inputs: files that must not be replaced or removed (the registration's inputs read by
                the caller; :attr:`input_files` are kept too): one of them in ``out_dir`` under an
                output's name is an :class:`InputError`, raised before anything is written.
        """
        from .errors import RegistrationCancelled

        image_format = check_format(image_format, IMAGE_FORMATS, "image")
        field_format = check_format(field_format, FIELD_FORMATS, "field")
        wanted = self._wanted_outputs(outputs)
        full_size_maps = require_flag(full_size_maps, "full_size_maps")
        if field_grid not in FIELD_GRIDS:
            raise InputError(f"unknown field grid {field_grid!r}; choose one of {', '.join(FIELD_GRIDS)}")
        names = output_file_names(wanted, image_format, field_format)
        report = progress or (lambda fraction, message: None)
        start = time.perf_counter()
        with atomic_output_dir(out_dir, stale=every_output_file_name(),
                               inputs=[*self.input_files, *inputs]) as staging:
            for number, key in enumerate(wanted):
                if cancel is not None and cancel():
                    raise RegistrationCancelled("registration cancelled")
                report(number / len(wanted), f"writing {names[key]}")
                if key == "metrics":
                    self.timings["write"] = time.perf_counter() - start
                    (staging / names[key]).write_text(json.dumps(self.summary(), indent=2), encoding="utf-8")
                elif key == "field":
                    write_field(self.field_image(field_grid), staging / names[key])
                else:
                    write_image(self.output_image(key, full_size_maps), staging / names[key])
            report(1.0, "written")
        self.timings["write"] = time.perf_counter() - start
        return {key: Path(out_dir) / name for key, name in names.items()}

    def _wanted_outputs(self, outputs: Union[None, str, Iterable[str]]) -> Tuple[str, ...]:
        wanted = check_outputs(outputs, self.warped_labels is not None)
        return wanted if wanted is not None else tuple(
            key for key in OUTPUTS if key != "labels" or self.warped_labels is not None)

    def output_image(self, key: str, full_size: bool = False) -> sitk.Image:
        """The image of output ``key`` ("warped", "labels", "entropy" or "jacobian"); with
        ``full_size`` the entropy and Jacobian maps are resampled onto the fixed grid (trilinear)."""
        from .outputs import resample_map

        if key not in ("warped", "labels", "entropy", "jacobian"):
            raise InputError(f"unknown output image {key!r}; choose 'warped', 'labels', 'entropy' or 'jacobian' (the "
                             "field: field_image())")
        if key == "labels" and self.warped_labels is None:
            raise InputError("the 'labels' output needs moving labels")
        full_size = require_flag(full_size, "full_size")
        if key == "warped":
            return self.warped
        if key == "labels":
            return self.warped_labels
        image = self.entropy if key == "entropy" else self.jacobian
        return resample_map(image, self.fixed_grid) if full_size else image
