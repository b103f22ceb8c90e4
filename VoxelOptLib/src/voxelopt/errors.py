"""Exceptions raised by voxelopt.

Every error a user can cause (bad files, bad geometry, bad parameters) is a
:class:`VoxelOptError` with a message that names the offending input, so callers
(the CLI, the Slicer module, batch scripts) can show it as is.
"""


class VoxelOptError(Exception):
    """Base class of every error voxelopt raises on purpose."""


class InputError(VoxelOptError, ValueError):
    """An input image, label map or path is unusable (unreadable, not 3-D, NaN, no overlap...)."""


class ConfigError(VoxelOptError, ValueError):
    """A registration parameter is invalid (negative alpha, empty theta schedule, unknown preset...)."""


class OutputError(VoxelOptError, OSError):
    """Outputs could not be written (a full disk, a folder whose permissions changed during the
    run...); the output folder was left as it was before."""


class InputWarning(UserWarning):
    """An input that can be registered, but probably not as the user means it (e.g. intensities
    that do not look like CT in Hounsfield units); the message says what to check."""


class RegistrationCancelled(VoxelOptError):
    """Raised between steps when the caller's cancel callback returns True."""


def itk_message(error: Exception) -> str:
    """The last line of a SimpleITK (ITK) exception's text, the one that says what went wrong
    (the lines before give ITK's source file and line)."""
    text = str(error).strip()
    return text.splitlines()[-1] if text else "unknown error"


def require_flag(value: object, what: str) -> bool:
    """``value`` if it is True or False (numpy's bools too), else :class:`InputError` naming
    ``what``: an option such as ``labels="no"`` would otherwise count as true."""
    if type(value).__name__ not in ("bool", "bool_"):
        raise InputError(f"{what} must be True or False, got {value!r}")
    return bool(value)
