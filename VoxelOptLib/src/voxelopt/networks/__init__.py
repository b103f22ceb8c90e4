"""Pretrained-network feature extractors.

Feature types (``RegistrationConfig.features`` / ``--features``):

* ``obelisk``: OBELISK-hybrid TCIA abdominal CT segmentation network, 9 logits / 10
  (weights: ``obeliskhybrid_tcia_fold1.pth``, downloaded on first use if not cached);
* ``pdd``: PDD-Net registration features, 24 channels (``dense_reg_mind2_feat_epoch2999.pth``);
* ``universal``: the VoxelOpt paper's Universal-Model U-Net, 8 channels (``--weights`` required);
* ``torchscript``: any TorchScript model file (``--weights`` required).

They are registered with :mod:`voxelopt.features` by name and imported on first use.
``config.weights`` may be a file or a directory holding the default file name; without it the
cache directory (``$VOXELOPT_WEIGHTS_DIR`` or ``~/.cache/voxelopt``) is used.
"""

from __future__ import annotations

from .obelisk import ObeliskExtractor, ObeliskHybridTCIA
from .pdd import PDDExtractor, PDDFeatureNet
from .torchscript import TorchScriptExtractor
from .universal import UniversalExtractor, UniversalUNet
from .weights import WeightsError, cache_dir, resolve_weights

__all__ = [
    "ObeliskExtractor", "ObeliskHybridTCIA", "PDDExtractor", "PDDFeatureNet", "TorchScriptExtractor",
    "UniversalExtractor", "UniversalUNet", "WeightsError", "cache_dir", "resolve_weights",
]
