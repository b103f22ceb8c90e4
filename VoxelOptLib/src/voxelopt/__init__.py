"""VoxelOpt: voxel-adaptive message passing for discrete deformable registration of CT.

Quick start::

    import SimpleITK as sitk, voxelopt
    result = voxelopt.register("fixed.nii.gz", "moving.nii.gz",
                               config=voxelopt.RegistrationConfig.preset("paper"))
    result.save("out/")            # field.nii.gz, warped.nii.gz, entropy.nii.gz, ...

The field is in LPS millimetres on the fixed grid, resampling direction:
``warped(x) = moving(x + field(x))`` (see :mod:`voxelopt.geometry`).
"""

from .cache import FeatureCache
from .config import PRESETS, RegistrationConfig
from .device import describe_device, resolve_device
from .errors import ConfigError, InputError, RegistrationCancelled, VoxelOptError
from .features import FeatureExtractor, available_extractors, register_extractor
from .io import ArrayImage, read_field, read_image
from .pipeline import register
from .result import RegistrationResult

__version__ = "0.1.0"

__all__ = [
    "PRESETS",
    "ArrayImage",
    "ConfigError",
    "FeatureCache",
    "FeatureExtractor",
    "InputError",
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
