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


class WeightsDownloadRequired(VoxelOptSlicerError):
    """The chosen network features need weights files that are not on this computer yet and
    downloads were not allowed: ``files`` (names), ``urls`` and the ``directory`` they would go to."""

    def __init__(self, files, urls, directory: str) -> None:
        self.files, self.urls, self.directory = list(files), list(urls), directory
        super().__init__(
            f"the network features need the weights file(s) {', '.join(self.files)}, not found in {directory}. "
            f"Allow the download (from {', '.join(self.urls)}), or put the file(s) there by hand"
        )


#: The engine's words for a setting -> the module's words (label of the GUI control).
_GUI_WORDS = (
    ("try another initial alignment ('centers' or 'com')", "set 'Initial alignment' (Advanced) to centers or com"),
    ("after the 'none' initial alignment", "with 'Initial alignment' none"),
    ("after the 'centers' initial alignment", "with 'Initial alignment' centers"),
    ("after the 'com' initial alignment", "with 'Initial alignment' com"),
    ("after the 'affine' initial alignment", "with 'Initial alignment' affine"),
    ("a smaller feature spacing or a larger working scale",
     "a smaller 'Feature spacing' or a larger 'Working scale' (Advanced)"),
    ("register the other way round (the smaller scan as the fixed image), or crop the fixed image",
     "swap the fixed and moving volumes (the smaller scan as the fixed volume), or crop the fixed volume"),
)


def message_for_gui(error: BaseException) -> str:
    """The text of ``error`` with the engine's parameter names replaced by the GUI's control labels."""
    text = str(error)
    for engine_words, gui_words in _GUI_WORDS:
        text = text.replace(engine_words, gui_words)
    return text
