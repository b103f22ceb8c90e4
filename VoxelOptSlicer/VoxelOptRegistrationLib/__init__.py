"""Slicer bridge of VoxelOpt: MRML nodes in and out of the ``voxelopt`` engine.

Uses only APIs that the ``slicer-core`` PyPI package provides, so it runs headless and is tested
for real. Nothing here imports torch at import time: the engine is imported when a registration
runs (see :mod:`.dependencies`).
"""

from .errors import InputNodeError, MissingDependencyError, VoxelOptSlicerError
from .logic import RegistrationLogic, RegistrationOutputs, RegistrationRun

__all__ = [
    "InputNodeError",
    "MissingDependencyError",
    "RegistrationLogic",
    "RegistrationOutputs",
    "RegistrationRun",
    "VoxelOptSlicerError",
]
