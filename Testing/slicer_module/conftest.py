"""Shared fixtures of the Slicer-bridge tests: they run on the real ``slicer-core`` package (no mocks).

This folder is deliberately not named ``slicer``: the ``slicer`` package of slicer-core merges
every ``<sys.path entry>/slicer`` folder into its namespace and imports its modules.

Paths: the module's Python package (``VoxelOptSlicer/``) and the engine (``VoxelOptLib/src``) are
put on ``sys.path`` the way the packaged extension has them side by side.
"""

import os
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
MODULE_DIR = os.path.join(REPO, "VoxelOptSlicer")
ENGINE_DIR = os.path.join(REPO, "VoxelOptLib", "src")
for _path in (HERE, MODULE_DIR, ENGINE_DIR):
    if _path not in sys.path:
        sys.path.insert(0, _path)

# Offscreen rendering through EGL (no X display); see docs in Testing/slicer/test_rendering.py.
os.environ.setdefault("VTK_DEFAULT_OPENGL_WINDOW", "vtkEGLRenderWindow")

import slicer  # noqa: E402,F401  (real slicer-core; the tests must fail if it is missing)


@pytest.fixture
def scene():
    """A fresh MRML scene, also set as ``slicer.mrmlScene`` for the ``slicer.util`` helpers."""
    from slicer_test_helpers import current_scene

    with current_scene() as new_scene:
        yield new_scene
