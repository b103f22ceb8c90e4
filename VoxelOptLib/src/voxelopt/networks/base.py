"""Shared behaviour of the extractors backed by a weights file: one loaded network per device."""

from __future__ import annotations

from pathlib import Path
from typing import Dict

import torch

from ..features.base import FeatureExtractor


class NetworkExtractor(FeatureExtractor):
    """A :class:`FeatureExtractor` whose network is read from ``weights_path`` on first use.

    Subclasses set ``weights_path`` and implement :meth:`load`.
    """

    weights_path: Path
    heavy = True

    def load(self, device: torch.device) -> torch.nn.Module:
        """Build the network and load its (already verified) weights onto ``device``."""
        raise NotImplementedError

    def network(self, device: torch.device) -> torch.nn.Module:
        """The loaded network on ``device`` (loaded once per device)."""
        networks: Dict[str, torch.nn.Module] = self.__dict__.setdefault("_networks", {})
        key = str(device)
        if key not in networks:
            networks[key] = self.load(device)
        return networks[key]
