"""Feature extractors: raw intensity, MIND-SSC, and pretrained networks (obelisk, pdd, universal,
torchscript; see :mod:`voxelopt.networks`, imported only when one of them is made).

``make_extractor(config)`` returns the extractor named by ``config.features``.
"""

from .base import (
    CombinedExtractor,
    FeatureExtractor,
    available_extractors,
    make_extractor,
    register_extractor,
    register_lazy_extractor,
)
from .intensity import RawIntensity
from .mind import MindSSC, mind_ssc

register_extractor("raw", lambda config: RawIntensity(config.hu_window))
register_extractor("mind", lambda config: MindSSC(config.hu_window, config.mind_radius, config.mind_dilation))
for _name, _target in (("obelisk", "voxelopt.networks.obelisk:ObeliskExtractor"),
                       ("pdd", "voxelopt.networks.pdd:PDDExtractor"),
                       ("universal", "voxelopt.networks.universal:UniversalExtractor"),
                       ("torchscript", "voxelopt.networks.torchscript:TorchScriptExtractor")):
    register_lazy_extractor(_name, _target)

__all__ = [
    "CombinedExtractor",
    "FeatureExtractor",
    "MindSSC",
    "RawIntensity",
    "available_extractors",
    "make_extractor",
    "mind_ssc",
    "register_extractor",
    "register_lazy_extractor",
]
