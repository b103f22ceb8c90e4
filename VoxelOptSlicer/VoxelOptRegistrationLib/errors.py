"""Errors raised by the Slicer bridge of VoxelOpt.

Like the engine's :class:`voxelopt.VoxelOptError`, every error a user can cause has a message that
names the offending node and says what to do, so the GUI and batch scripts can show it as is.
These classes do not import the engine (and so torch): the module must load without torch.
"""


class VoxelOptSlicerError(Exception):
    """Base class of the errors the Slicer bridge raises on purpose."""


class InputNodeError(VoxelOptSlicerError, ValueError):
    """An input node is unusable: missing, empty, 2-D, NaN voxels, bad geometry, under a transform."""


class MissingDependencyError(VoxelOptSlicerError, RuntimeError):
    """A Python package the registration needs (PyTorch) is not installed."""
