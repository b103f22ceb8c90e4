"""VoxelOpt: voxel-adaptive message passing for discrete deformable registration of CT.

Quick start::

    import SimpleITK as sitk, voxelopt
    result = voxelopt.register("fixed.nii.gz", "moving.nii.gz",
                               config=voxelopt.RegistrationConfig.preset("paper"))
    result.save("out/")            # field.nii.gz, warped.nii.gz, entropy.nii.gz, ...

The field is in LPS millimetres, resampling direction: ``warped(x) = moving(x + field(x))``
(see :mod:`voxelopt.geometry`). It is kept on the solver's working grid (the fixed image's box at
the feature spacing and working scale; ``result.field_image("fixed")`` samples it on the fixed
grid); warped images are on the fixed grid.

``import voxelopt`` is light: the configuration and the errors are imported at once, the compute
names (``register``, ``FeatureCache``, ...) on first use (PEP 562), so torch is imported only
when something computes. ``voxelopt.config``, ``voxelopt.errors`` and ``voxelopt.phantom``
never import torch.
"""

import importlib
from typing import Any

from .config import PRESETS, RegistrationConfig
from .errors import ConfigError, InputError, InputWarning, OutputError, RegistrationCancelled, VoxelOptError

__version__ = "0.1.0"
#: The oldest torch the engine supports (as in pyproject.toml's dependencies). The engine's tests pass
#: with 2.0.1, 2.1.2 and 2.8.0 on Python 3.9 and 2.13.0 on 3.11 and 3.12; 1.13's weights-only loading cannot
#: read float values in a checkpoint (network features).
MINIMUM_TORCH_VERSION = "2.0"

#: Public name -> the submodule that defines it, imported on first access.
_LAZY = {
    "ArrayImage": "io",
    "FeatureCache": "cache",
    "FeatureExtractor": "features",
    "RegistrationResult": "result",
    "available_extractors": "features",
    "describe_device": "device",
    "read_field": "io",
    "read_image": "io",
    "register": "pipeline",
    "register_extractor": "features",
    "resolve_device": "device",
}


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'voxelopt' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    globals()[name] = value  # later accesses skip this function
    return value


def __dir__():
    """The public names (``__all__``) and the submodules imported so far (not the helpers of this file)."""
    return sorted(set(__all__) | {name for name, value in globals().items() if isinstance(value, type(importlib))
                                  and value.__name__.startswith(__name__ + ".")})


__all__ = [
    "MINIMUM_TORCH_VERSION",
    "PRESETS",
    "ArrayImage",
    "ConfigError",
    "FeatureCache",
    "FeatureExtractor",
    "InputError",
    "InputWarning",
    "OutputError",
    "RegistrationCancelled",
    "RegistrationConfig",
    "RegistrationResult",
    "VoxelOptError",
    "__version__",
    "available_extractors",
    "describe_device",
    "read_field",
    "read_image",
    "register",
    "register_extractor",
    "resolve_device",
]
