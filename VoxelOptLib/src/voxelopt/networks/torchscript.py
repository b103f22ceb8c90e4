"""Features from a user's TorchScript model file (``--features torchscript --weights model.pt``).

Contract for the model: it takes a float32 tensor (1, 1, n0, n1, n2) and returns a tensor
(1, C, m0, m1, m2) (or (C, m0, m1, m2)) at any resolution covering the same field of view:
output voxel j along an axis is centred at input index ``(j + 0.5) * n / m - 0.5`` (the
convention of ``F.interpolate(align_corners=False)`` and of strided convolutions with "same"
padding, to within a fraction of a voxel).

How the input is prepared is read from an optional JSON entry ``voxelopt.json`` stored in the
file (``torch.jit.save(model, path, _extra_files={"voxelopt.json": json.dumps(meta)})``)::

    {"orientation": "RAS",        # axes n0, n1, n2 = x, y, z of the image oriented like this
     "spacing_mm": 2.0,           # about isotropic input spacing on the image's box; null keeps the image's voxels
     "hu_window": [-500, 800],    # clip HU and scale to [0, 1]; null passes raw HU
     "multiple_of": 8}            # pad each axis with air (-1024 HU) to a multiple

Defaults: :data:`DEFAULT_META`. A TorchScript file is a program: TorchScript cannot run
arbitrary Python, but only load models you trust.
"""

from __future__ import annotations

import json
import math
from typing import Any, Dict, Optional

import SimpleITK as sitk
import torch

from ..errors import ConfigError
from ..features.base import FeatureExtractor
from ..geometry import check_image, features_to_image, network_volume, oriented_grid, padded_to_multiple, window_hu
from .weights import WeightsError, resolve_weights

META_FILE = "voxelopt.json"
DEFAULT_META: Dict[str, Any] = {"orientation": "RAS", "spacing_mm": 2.0, "hu_window": [-500.0, 800.0], "multiple_of": 1}
_ORIENTATION_LETTERS = ({"L", "R"}, {"P", "A"}, {"S", "I"})


def _validate_meta(meta: Dict[str, Any], source: str) -> Dict[str, Any]:
    unknown = sorted(set(meta) - set(DEFAULT_META))
    if unknown:
        raise ConfigError(f"{source}: unknown {META_FILE} key(s) {', '.join(unknown)}; known: {', '.join(DEFAULT_META)}")
    out = dict(DEFAULT_META)
    out.update(meta)
    code = out["orientation"]
    if not (isinstance(code, str) and len(code) == 3 and
            sorted(sum(([i for i, s in enumerate(_ORIENTATION_LETTERS) if c in s] for c in code.upper()), [])) == [0, 1, 2]):
        raise ConfigError(f"{source}: orientation must be three letters like 'RAS' or 'LPS', got {code!r}")
    out["orientation"] = code.upper()
    spacing = out["spacing_mm"]
    if spacing is not None and not (isinstance(spacing, (int, float)) and math.isfinite(spacing) and spacing > 0):
        raise ConfigError(f"{source}: spacing_mm must be > 0 or null, got {spacing!r}")
    window = out["hu_window"]
    if window is not None and not (isinstance(window, (list, tuple)) and len(window) == 2 and float(window[1]) > float(window[0])):
        raise ConfigError(f"{source}: hu_window must be [low, high] with high > low, or null, got {window!r}")
    multiple = out["multiple_of"]
    if not (isinstance(multiple, int) and multiple >= 1):
        raise ConfigError(f"{source}: multiple_of must be an integer >= 1, got {multiple!r}")
    return out


class TorchScriptExtractor(FeatureExtractor):
    """Features from a TorchScript model (see the module docstring for the model's contract)."""

    name = "torchscript"
    heavy = True  # a network: every core for it (see FeatureExtractor.heavy)

    def __init__(self, weights: Optional[str]) -> None:
        if weights is None:
            raise ConfigError("--features torchscript needs the model file: pass --weights PATH (config.weights)")
        self.path, self.sha256 = resolve_weights("torchscript", weights, None, allow_download=False)
        files = {META_FILE: ""}
        try:
            torch.jit.load(str(self.path), map_location="cpu", _extra_files=files)
        except Exception as exc:
            raise WeightsError(f"{self.path} is not a TorchScript model file: {type(exc).__name__}: {exc}") from exc
        raw = files[META_FILE]
        try:
            meta = json.loads(raw) if raw else {}
        except ValueError as exc:
            raise ConfigError(f"{self.path}: {META_FILE} is not valid JSON: {exc}") from exc
        if not isinstance(meta, dict):
            raise ConfigError(f"{self.path}: {META_FILE} must hold a JSON object")
        self.meta = _validate_meta(meta, str(self.path))
        self._models: Dict[str, torch.jit.ScriptModule] = {}

    def cache_key(self) -> str:
        return f"torchscript:{self.sha256[:16]}:" + json.dumps(self.meta, sort_keys=True)

    def model(self, device: torch.device):
        key = str(device)
        if key not in self._models:
            self._models[key] = torch.jit.load(str(self.path), map_location=device).eval()
        return self._models[key]

    def extract(self, image: sitk.Image, device: torch.device) -> torch.Tensor:
        check_image(image, "the image for network features")
        device = torch.device(device)
        grid = padded_to_multiple(oriented_grid(image, self.meta["orientation"], self.meta["spacing_mm"]),
                                  self.meta["multiple_of"])
        x = network_volume(image, grid, device)
        if self.meta["hu_window"] is not None:
            x = window_hu(x, self.meta["hu_window"])
        try:
            with torch.inference_mode():
                y = self.model(device)(x)
        except torch.cuda.OutOfMemoryError:
            raise
        except Exception as exc:  # the user's program failed
            # TorchScript's message is the interpreter's trace; its last line is the model's own error
            last_line = (str(exc).strip().splitlines() or [type(exc).__name__])[-1].strip()
            raise WeightsError(f"{self.path}: the model failed on an input of shape {tuple(x.shape)}: "
                               f"{last_line}") from exc
        if not isinstance(y, torch.Tensor):
            raise WeightsError(f"{self.path}: the model returned {type(y).__name__}, expected a tensor")
        if y.dim() == 5 and y.shape[0] == 1:
            y = y[0]
        if y.dim() != 4 or y.numel() == 0 or not torch.is_floating_point(y):
            raise WeightsError(f"{self.path}: the model must return a non-empty float tensor (1, C, m0, m1, m2), got "
                               f"{y.dtype} {tuple(y.shape)}")
        # Output voxels span the padded input (the image's box, padded).
        return features_to_image(y.float(), grid.with_size(y.shape[1:]), image)
