"""The result of a registration and how it is written to disk.

File names written by :meth:`RegistrationResult.save` are stable (scripts rely on them):
``field.<fmt>``, ``warped.<fmt>``, ``warped_labels.<fmt>`` (when labels were given),
``entropy.<fmt>``, ``jacobian.<fmt>`` and ``metrics.json``.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import SimpleITK as sitk

from .config import RegistrationConfig
from .io import FIELD_FORMATS, IMAGE_FORMATS, PathLike, atomic_output_dir, check_format, write_field, write_image


@dataclasses.dataclass
class RegistrationResult:
    """Everything a registration produces; all images are on the fixed image's grid.

    Attributes:
        field: displacement field, VectorFloat64, (x, y, z) LPS millimetres, resampling
            direction: ``warped(x) = moving(x + field(x))`` (ITK DisplacementFieldTransform;
            Slicer "FromParent").
        warped: the moving image resampled through the field (trilinear), float32.
        warped_labels: the moving labels resampled through the field (nearest), or None.
        entropy: displacement entropy (nats) of the finest pyramid level; high = uncertain.
        jacobian: determinant of the Jacobian of ``x -> x + field(x)``; <= 0 is folding.
        metrics: Jacobian statistics, and Dice / HD95 when both label maps were given.
        timings: wall-clock seconds per stage (``prepare``, ``features_fixed``,
            ``features_moving``, ``solver`` (itself split into ``level_1`` (coarsest) ... and, when
            it ran, ``refine``), ``outputs``, ``total``).
        config: the parameters used.
        device: torch device the computation ran on.
        initial_translation_mm: translation of the initial alignment (included in ``field``).
    """

    field: sitk.Image
    warped: sitk.Image
    warped_labels: Optional[sitk.Image]
    entropy: sitk.Image
    jacobian: sitk.Image
    metrics: Dict[str, Any]
    timings: Dict[str, float]
    config: RegistrationConfig
    device: str
    initial_translation_mm: Tuple[float, float, float]

    def transform(self) -> sitk.DisplacementFieldTransform:
        """A SimpleITK transform of the field (a copy: the result keeps its field)."""
        return sitk.DisplacementFieldTransform(sitk.Image(self.field))

    def summary(self) -> Dict[str, Any]:
        """The metrics, timings and parameters, as written to ``metrics.json``."""
        return _finite({
            "metrics": self.metrics,
            "timings_s": self.timings,
            "config": self.config.to_dict(),
            "device": self.device,
            "initial_translation_mm": list(self.initial_translation_mm),
        })

    def save(self, out_dir: PathLike, image_format: str = "nii.gz", field_format: str = "nii.gz") -> Dict[str, Path]:
        """Write all outputs into ``out_dir`` (all or nothing); returns the written paths."""
        image_format = check_format(image_format, IMAGE_FORMATS, "image")
        field_format = check_format(field_format, FIELD_FORMATS, "field")
        images = {"warped": self.warped, "entropy": self.entropy, "jacobian": self.jacobian}
        if self.warped_labels is not None:
            images["warped_labels"] = self.warped_labels
        names = {"field": f"field.{field_format}", "metrics": "metrics.json"}
        names.update({key: f"{key}.{image_format}" for key in images})
        with atomic_output_dir(out_dir) as staging:
            write_field(self.field, staging / names["field"])
            for key, image in images.items():
                write_image(image, staging / names[key])
            (staging / names["metrics"]).write_text(json.dumps(self.summary(), indent=2))
        return {key: Path(out_dir) / name for key, name in names.items()}


def _finite(value: Any) -> Any:
    """Replace NaN/inf by None so the JSON is standard."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value
