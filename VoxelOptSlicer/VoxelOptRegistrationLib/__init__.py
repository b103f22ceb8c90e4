"""Slicer bridge of VoxelOpt: MRML nodes in and out of the ``voxelopt`` engine.

Uses only APIs that the ``slicer-core`` PyPI package provides, so it runs headless and is tested
for real. Nothing here imports torch at import time: the engine is imported when a registration
runs (see :mod:`.dependencies`).
"""

from .errors import InputNodeError, MissingDependencyError, VoxelOptSlicerError, WeightsDownloadRequired
from .logic import EngineInputs, EngineOutput, RegistrationLogic, RegistrationOutputs, RegistrationRequest, RegistrationRun
from .presets import PresetError, PresetStore
from .worker import EngineWorker

__all__ = [
    "EngineInputs",
    "EngineOutput",
    "EngineWorker",
    "InputNodeError",
    "MissingDependencyError",
    "PresetError",
    "PresetStore",
    "RegistrationLogic",
    "RegistrationOutputs",
    "RegistrationRequest",
    "RegistrationRun",
    "VoxelOptSlicerError",
    "WeightsDownloadRequired",
]
