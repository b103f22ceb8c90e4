"""User presets: the registration parameters of a parameter node saved under a name, as JSON files.

One file per preset, ``<folder>/<name>.json``, holding ``{"name": ..., "values": {parameter: value}}``
with the parameter names and units of :mod:`.parameters` (display-only parameters are not saved).
The folder is, in this order: the ``folder`` argument (tests, scripts), the ``VOXELOPT_PRESET_DIR``
environment variable, ``VoxelOpt/presets`` next to Slicer's user settings file, or
``~/.config/VoxelOpt/presets`` without the application.
"""

import json
import os
import re
from typing import Any, Dict, List, Optional

from . import parameters
from .errors import VoxelOptSlicerError

_NAME = re.compile(r"^[\w][\w .+-]{0,63}$")


class PresetError(VoxelOptSlicerError, ValueError):
    """A preset name, file or content that cannot be used."""


def default_folder() -> str:
    """The user preset folder (see the module docstring); not created here."""
    if os.environ.get("VOXELOPT_PRESET_DIR"):
        return os.environ["VOXELOPT_PRESET_DIR"]
    try:
        import slicer

        settings_file = slicer.app.slicerUserSettingsFilePath
        return os.path.join(os.path.dirname(settings_file), "VoxelOpt", "presets")
    except Exception:  # no desktop application (headless, batch)
        return os.path.join(os.path.expanduser("~"), ".config", "VoxelOpt", "presets")


class PresetStore:
    """Save, list, load and delete user presets in one folder."""

    def __init__(self, folder: Optional[str] = None) -> None:
        self.folder = folder or default_folder()

    def _path(self, name: str) -> str:
        if not isinstance(name, str) or not _NAME.match(name) or name in parameters.PRESET_CHOICES:
            raise PresetError(
                f"preset name {name!r} is not usable: use 1-64 letters, digits, spaces, '.', '+', '-' or '_', "
                f"and not a built-in preset ({', '.join(parameters.PRESET_CHOICES)})"
            )
        return os.path.join(self.folder, name + ".json")

    def names(self) -> List[str]:
        """The saved preset names, sorted."""
        if not os.path.isdir(self.folder):
            return []
        return sorted(f[: -len(".json")] for f in os.listdir(self.folder) if f.endswith(".json"))

    def save(self, name: str, values: Dict[str, Any]) -> str:
        """Store the registration values of ``values`` (display-only ones dropped) as ``name``; returns the file."""
        path = self._path(name)
        kept = {p.name: values[p.name] for p in parameters.REGISTRATION_VALUES if p.name in values}
        for key, value in kept.items():
            parameters.format_value(parameters.VALUE_BY_NAME[key], value)  # type check before writing
        os.makedirs(self.folder, exist_ok=True)
        temporary = path + ".tmp"
        with open(temporary, "w", encoding="utf-8") as stream:
            json.dump({"name": name, "values": kept}, stream, indent=2, sort_keys=True)
        os.replace(temporary, path)  # a failed write leaves no half-written preset
        return path

    def load(self, name: str) -> Dict[str, Any]:
        """The values saved as ``name`` (raises PresetError when missing, unreadable or invalid);
        a registration parameter the preset does not hold (one added after it was saved) takes its
        default, so that loading it always sets every registration parameter."""
        path = self._path(name)
        try:
            with open(path, encoding="utf-8") as stream:
                values = json.load(stream)["values"]
        except FileNotFoundError:
            raise PresetError(f"no user preset {name!r} in {self.folder}") from None
        except (ValueError, KeyError, TypeError) as error:
            raise PresetError(f"user preset file {path} is not a VoxelOpt preset: {error}") from None
        unknown = sorted(set(values) - set(parameters.VALUE_BY_NAME))
        if unknown:
            raise PresetError(f"user preset {name!r} has unknown parameter(s) {', '.join(unknown)}")
        for key, value in values.items():
            try:
                parameters.format_value(parameters.VALUE_BY_NAME[key], value)
            except TypeError as error:
                raise PresetError(f"user preset {name!r}: {error}") from None
        return {**{p.name: p.default for p in parameters.REGISTRATION_VALUES}, **values}

    def delete(self, name: str) -> None:
        """Remove the preset ``name`` (no error when it does not exist)."""
        path = self._path(name)
        if os.path.exists(path):
            os.remove(path)
