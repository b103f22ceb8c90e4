"""Pretrained-network feature extractors.

Feature types (``RegistrationConfig.features`` / ``--features``):

* ``obelisk``: OBELISK-hybrid TCIA abdominal CT segmentation network, 9 logits / 3
  (weights: ``obeliskhybrid_tcia_fold1.pth``, downloaded on first use if not cached);
* ``pdd``: PDD-Net registration features, 24 channels (``dense_reg_mind2_feat_epoch2999.pth``);
* ``universal``: the VoxelOpt paper's Universal-Model U-Net, 8 channels (``--weights`` required);
* ``torchscript``: any TorchScript model file (``--weights`` required).

``config.weights`` may be a file or a directory holding the default file name; without it the
cache directory (``$VOXELOPT_WEIGHTS_DIR`` or ``~/.cache/voxelopt``) is used.
"""

from __future__ import annotations

from ..features.base import FeatureExtractor, register_extractor
from .obelisk import ObeliskExtractor, ObeliskHybridTCIA
from .pdd import PDDExtractor, PDDFeatureNet
from .torchscript import TorchScriptExtractor
from .universal import UniversalExtractor, UniversalUNet
from .weights import WeightsError, cache_dir, resolve_weights

__all__ = [
    "ObeliskExtractor", "ObeliskHybridTCIA", "PDDExtractor", "PDDFeatureNet", "TorchScriptExtractor",
    "UniversalExtractor", "UniversalUNet", "WeightsError", "cache_dir", "resolve_weights",
    "register_network_extractors",
]


def _obelisk(config) -> FeatureExtractor:
    return ObeliskExtractor(weights=config.weights)


def _pdd(config) -> FeatureExtractor:
    return PDDExtractor(weights=config.weights)


def _universal(config) -> FeatureExtractor:
    return UniversalExtractor(weights=config.weights)


def _torchscript(config) -> FeatureExtractor:
    return TorchScriptExtractor(weights=config.weights)


def register_network_extractors() -> None:
    """Register ``obelisk``, ``pdd``, ``universal`` and ``torchscript`` with the feature registry.

    Each factory takes the :class:`~voxelopt.config.RegistrationConfig` and uses
    ``config.weights`` (file, directory or None). Weights are located and verified when the
    extractor is created; the network is loaded on first :meth:`extract`.
    """
    register_extractor("obelisk", _obelisk)
    register_extractor("pdd", _pdd)
    register_extractor("universal", _universal)
    register_extractor("torchscript", _torchscript)
