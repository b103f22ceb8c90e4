"""The feature-extractor interface every feature type implements.

A feature extractor turns one scalar CT image (HU, any geometry) into a multi-channel feature
map *on that image's voxel grid*. The registration pipeline resamples both images onto the
feature grid first, so an extractor never has to resample to the other image; a network
extractor that needs its own input grid (orientation, spacing, crop) does that internally and
maps its output back to the grid of the image it was given.
"""

from __future__ import annotations

import abc
import importlib
from typing import Callable, Dict, List, Optional, Sequence

import SimpleITK as sitk
import torch

from ..errors import ConfigError
from ..geometry import resize_volume


class FeatureExtractor(abc.ABC):
    """Computes features of one image.

    Subclasses set :attr:`name` and implement :meth:`extract` and :meth:`cache_key`.
    """

    #: Short name used on the command line (``--features NAME``).
    name: str = ""
    #: True when extracting takes seconds of every core (a network): the registration then does
    #: not keep a core back for the affine stage that runs beside the fixed image's features.
    heavy: bool = False

    @abc.abstractmethod
    def extract(self, image: sitk.Image, device: torch.device) -> torch.Tensor:
        """Features of ``image``.

        Args:
            image: scalar 3-D image, intensities in HU, with its spacing/origin/direction.
            device: torch device to compute on.

        Returns:
            float32 tensor (C, Z, Y, X) on ``device``, on the voxel grid of ``image`` (array
            order z, y, x as ``sitk.GetArrayFromImage``), in any memory layout (network
            features come channels-last: the pipeline resizes them to the working grid before
            it makes them contiguous). Channels should have comparable scales (the cost is the
            mean L1 distance over channels).
        """

    @abc.abstractmethod
    def cache_key(self) -> str:
        """A string that changes whenever the extractor's output could change (settings, weights)."""

    def extract_resized(self, image: sitk.Image, device: torch.device, shape: Sequence[int]) -> torch.Tensor:
        """:meth:`extract` resized to ``shape`` (Z, Y, X), a grid on the same box (the working
        grid; ``resize_volume``: trilinear, halving averages voxel pairs), as a contiguous
        (1, C, Z, Y, X) tensor: what the registration uses."""
        return resize_volume(self.extract(image, device)[None], shape).contiguous()


class CombinedExtractor(FeatureExtractor):
    """Concatenates the channels of several extractors (``--features mind+obelisk``).

    Each part's channels are scaled by ``1 / mean absolute value`` over the image, so that a part
    with large activations does not drown the others in the mean-L1 cost.
    """

    def __init__(self, parts: List[FeatureExtractor]):
        if len(parts) < 2:
            raise ConfigError("a feature combination needs at least two feature types")
        self.parts = parts
        self.name = "+".join(p.name for p in parts)
        self.heavy = any(p.heavy for p in parts)

    def extract(self, image: sitk.Image, device: torch.device) -> torch.Tensor:
        return self._combined(image, device, None)[0]

    def extract_resized(self, image: sitk.Image, device: torch.device, shape: Sequence[int]) -> torch.Tensor:
        """Each part resized to ``shape`` before the parts are put together: the full-size
        concatenation, a copy of every channel (21-36 channels of a 192x160x256 image: 0.7-1.3 s
        on 2 CPU cores), is never made. Same values as resizing :meth:`extract`'s."""
        return self._combined(image, device, shape)

    def _combined(self, image: sitk.Image, device: torch.device, shape: Optional[Sequence[int]]) -> torch.Tensor:
        """(1, C, ...) contiguous: the parts, each scaled to unit mean absolute value on the
        image's grid, on the image's grid (``shape`` None) or resized to ``shape``."""
        maps = []
        for part in self.parts:
            f = part.extract(image, device)[None]
            scale = unit_scale(f)
            maps.append((f if shape is None else resize_volume(f, shape), scale))
            del f
        first = maps[0][0]
        out = torch.empty((1, sum(f.shape[1] for f, _ in maps)) + tuple(first.shape[2:]), dtype=first.dtype,
                          device=first.device)
        start = 0
        for f, scale in maps:  # scaled straight into place: one pass per part
            torch.mul(f, scale, out=out[:, start:start + f.shape[1]])
            start += f.shape[1]
        return out

    def cache_key(self) -> str:
        return "+".join(p.cache_key() for p in self.parts)


def mean_abs(x: torch.Tensor) -> float:
    """Mean absolute value of a feature tensor ((C, Z, Y, X) or (1, C, Z, Y, X), any memory
    layout), summed channel by channel in float64: exact for any size, with one channel's
    temporary. (``torch.linalg.vector_norm(x, ord=1)`` of a float32 tensor accumulates in float32
    on the CPU and drifts: 0.36 instead of 0.93 for 12 MIND channels of a 192x160x256 image.)"""
    channels = x.reshape(-1, *x.shape[-3:])  # a view: only leading dims are merged
    total = sum(float(channel.abs().sum(dtype=torch.float64)) for channel in channels)
    return total / max(x.numel(), 1)


def unit_scale(x: torch.Tensor) -> float:
    """The factor that gives a group of feature channels unit mean absolute value
    (``1 / max(mean_abs(x), 1e-6)``): how combined features and grouped network outputs are
    balanced against each other in the mean-L1 cost."""
    return 1.0 / max(mean_abs(x), 1e-6)


ExtractorFactory = Callable[..., FeatureExtractor]
_REGISTRY: Dict[str, ExtractorFactory] = {}


def register_extractor(name: str, factory: ExtractorFactory) -> None:
    """Make ``factory(config)`` available as feature type ``name``.

    ``factory`` receives the :class:`voxelopt.config.RegistrationConfig` and returns an extractor.
    """
    _REGISTRY[name] = factory


def register_lazy_extractor(name: str, target: str) -> None:
    """Make feature type ``name`` the class ``target`` = ``"package.module:Class"``, imported only
    when such an extractor is made; it is built as ``Class(weights=config.weights)``."""
    module_name, class_name = target.split(":")

    def factory(config) -> FeatureExtractor:
        return getattr(importlib.import_module(module_name), class_name)(weights=config.weights)

    register_extractor(name, factory)


def available_extractors() -> List[str]:
    """Names accepted by ``RegistrationConfig.features`` (joinable with ``+``)."""
    return sorted(_REGISTRY)


def make_extractor(config) -> FeatureExtractor:
    """The extractor named by ``config.features`` (``"a+b"`` combines several)."""
    names = [n.strip() for n in config.features.split("+")]
    unknown = [n for n in names if n not in _REGISTRY]
    if unknown:
        raise ConfigError(
            f"unknown feature type {', '.join(unknown)}; available: {', '.join(available_extractors())}"
        )
    parts = [_REGISTRY[n](config) for n in names]
    return parts[0] if len(parts) == 1 else CombinedExtractor(parts)
