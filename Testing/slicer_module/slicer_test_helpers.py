"""Helpers shared by the Slicer-bridge tests (a uniquely named module: ``conftest`` is taken by Testing/)."""

import contextlib
import os
from typing import Iterator

import numpy as np
import pytest


def engine_available() -> bool:
    """True when the voxelopt engine (with torch) provides ``register``."""
    try:
        from voxelopt import register  # loads torch
    except Exception:  # the engine or torch missing
        return False
    return callable(register)


#: Skip marker for tests that run the engine. Under CI (CI=true) nothing is skipped: a missing
#: engine or torch must fail the run, not hide it.
requires_engine = pytest.mark.skipif(
    not engine_available() and not os.environ.get("CI"), reason="voxelopt.register (or torch) is not available"
)


@contextlib.contextmanager
def current_scene() -> Iterator:
    """A fresh MRML scene, set as ``slicer.mrmlScene`` (for the ``slicer.util`` helpers) while
    the block runs; cleared and the previous one restored afterwards."""
    import slicer

    scene = slicer.vtkMRMLScene()
    previous = getattr(slicer, "mrmlScene", None)
    slicer.mrmlScene = scene
    try:
        yield scene
    finally:
        scene.Clear(1)
        slicer.mrmlScene = previous


def add_segment(scene, segmentation_node, array_kji, reference, name):
    """Import a label array on ``reference``'s grid into ``segmentation_node`` (one segment per
    label, after the others); segments overlapping those there go to a layer of their own."""
    import slicer
    from VoxelOptRegistrationLib import volumes

    segmentation = segmentation_node.GetSegmentation()
    labelmap = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", name)
    volumes.set_volume_array(labelmap, array_kji.astype(np.int16), *volumes.node_geometry_ras(reference))
    count = segmentation.GetNumberOfSegments()
    assert slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(labelmap, segmentation_node)
    scene.RemoveNode(labelmap)
    if segmentation.GetNumberOfSegments() == count + 1:
        segmentation.GetNthSegment(count).SetName(name)
    return [segmentation.GetNthSegmentID(i) for i in range(count, segmentation.GetNumberOfSegments())]
