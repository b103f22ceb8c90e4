"""Raw-intensity features: the HU window clipped and scaled to [0, 1]."""

from __future__ import annotations

from typing import Tuple

import SimpleITK as sitk
import torch

from ..geometry import image_to_tensor, window_hu
from .base import FeatureExtractor


class RawIntensity(FeatureExtractor):
    """One channel: the windowed intensity (the paper's "raw" features)."""

    name = "raw"

    def __init__(self, window: Tuple[float, float] = (-800.0, 500.0)):
        self.window = (float(window[0]), float(window[1]))

    def extract(self, image: sitk.Image, device: torch.device) -> torch.Tensor:
        return window_hu(image_to_tensor(image, device), self.window)[0]

    def cache_key(self) -> str:
        return f"raw(window={self.window})"
