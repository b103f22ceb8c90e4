"""Feature extractors: raw intensity, MIND-SSC, and pretrained networks (obelisk, pdd, universal,
torchscript; see :mod:`voxelopt.networks`).

``make_extractor(config)`` returns the extractor named by ``config.features``.
"""

from .base import CombinedExtractor, FeatureExtractor, available_extractors, make_extractor, register_extractor
from .intensity import RawIntensity, window_intensity
from .mind import MindSSC, mind_ssc

register_extractor("raw", lambda config: RawIntensity(config.hu_window))
register_extractor("mind", lambda config: MindSSC(config.hu_window, config.mind_radius, config.mind_dilation))

from ..networks import register_network_extractors  # noqa: E402  (networks build on .base)

register_network_extractors()

__all__ = [
    "CombinedExtractor",
    "FeatureExtractor",
    "MindSSC",
    "RawIntensity",
    "available_extractors",
    "make_extractor",
    "mind_ssc",
    "register_extractor",
    "window_intensity",
]
