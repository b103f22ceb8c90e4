"""Helpers shared by the Slicer-bridge tests (a uniquely named module: ``conftest`` is taken by Testing/)."""

import os

import pytest


def engine_available() -> bool:
    """True when the voxelopt engine (with torch) provides ``register``."""
    try:
        from voxelopt import register  # noqa: F401  (loads torch)
    except Exception:  # the engine or torch missing
        return False
    return True


#: Skip marker for tests that run the engine. Under CI (CI=true) nothing is skipped: a missing
#: engine or torch must fail the run, not hide it.
requires_engine = pytest.mark.skipif(
    not engine_available() and not os.environ.get("CI"), reason="voxelopt.register (or torch) is not available"
)
