"""The segmentations' label-map export read straight from a shared labelmap layer equals Slicer's
own export (ExportSegmentsToLabelmapNode), voxel for voxel and in geometry; anything it does not
cover falls back to Slicer's export. Real slicer-core, oblique LPS-stored phantom volumes."""

import numpy as np
import pytest
import SimpleITK as sitk

from slicer_test_helpers import requires_engine
from VoxelOptRegistrationLib import phantom_nodes, segmentations, volumes

pytestmark = requires_engine


def ids_of(node):
    segmentation = node.GetSegmentation()
    return [segmentation.GetNthSegmentID(i) for i in range(segmentation.GetNumberOfSegments())]


def cropped_volume(scene, volume, start_ijk, size_ijk, name):
    """A volume node on a whole-voxel sub-box of ``volume``'s grid (same axes and spacing)."""
    image = volumes.sitk_from_volume_node(volume)
    crop = sitk.RegionOfInterest(image, [int(n) for n in size_ijk], [int(s) for s in start_ijk])
    return volumes.add_volume_node_from_sitk(scene, crop, name)


@pytest.mark.parametrize("case", ["fixed", "moving", "subset in another order", "reference inside the layer",
                                  "reference beyond the layer"])
def test_the_shared_layer_read_equals_slicers_export(scene, case):
    nodes = phantom_nodes.add_phantom_volumes(scene, with_segmentations=True,
                                              moving_geometry=((36, 40, 22), (10.0, 8.0, 9.0), 35.0))
    role = "moving" if case == "moving" else "fixed"
    segmentation, reference = nodes[f"{role}_segmentation"], nodes[role]
    ids = ids_of(segmentation)
    if case == "subset in another order":
        ids = ids[::-2]
    if case == "reference inside the layer":  # a sub-box: the layer is cropped
        reference = cropped_volume(scene, reference, (8, 6, 5), (20, 18, 12), "inner")
    if case == "reference beyond the layer":  # a box reaching past the grid on one side: the layer is padded
        image = volumes.sitk_from_volume_node(reference)
        padded = sitk.ConstantPad(image, [3, 0, 2], [5, 4, 0], -1000)
        reference = volumes.add_volume_node_from_sitk(scene, padded, "padded")
    array = segmentations._labels_from_shared_layer(segmentation, ids, reference, np.dtype(np.uint8))
    assert array is not None  # the shortcut covers these cases
    expected = segmentations._slicer_export(segmentation, ids, reference, "check")
    assert np.array_equal(array, sitk.GetArrayViewFromImage(expected))
    assert set(np.unique(array)) == set(range(len(ids) + 1))  # every asked-for segment is there
    got = segmentations._export_labelmap(segmentation, ids, reference, "check")
    assert got.GetSize() == expected.GetSize() and got.GetPixelID() == expected.GetPixelID()
    for a, b in ((got.GetOrigin(), expected.GetOrigin()), (got.GetSpacing(), expected.GetSpacing()),
                 (got.GetDirection(), expected.GetDirection())):
        np.testing.assert_allclose(a, b, atol=1e-9)


@pytest.mark.parametrize("case", ["another spacing", "half a voxel off", "overlapping segments"])
def test_other_cases_go_to_slicers_export(scene, case):
    nodes = phantom_nodes.add_phantom_volumes(scene, with_segmentations=True)
    segmentation, reference = nodes["fixed_segmentation"], nodes["fixed"]
    ids = ids_of(segmentation)
    image = volumes.sitk_from_volume_node(reference)
    if case == "another spacing":
        grid = sitk.Image([n * 2 for n in image.GetSize()], sitk.sitkUInt8)
        grid.SetSpacing([s / 2 for s in image.GetSpacing()])
        grid.SetDirection(image.GetDirection())
        grid.SetOrigin(image.GetOrigin())
        reference = volumes.add_volume_node_from_sitk(scene, grid, "finer")
    elif case == "half a voxel off":
        image.SetOrigin(image.TransformContinuousIndexToPhysicalPoint((0.5, 0.0, 0.0)))
        reference = volumes.add_volume_node_from_sitk(scene, image, "shifted")
    else:  # a segment overlapping the others, imported: it goes to a layer of its own
        import slicer

        blob = np.zeros(sitk.GetArrayViewFromImage(image).shape, np.int16)
        blob[2:8, 3:12, 4:20] = 1
        labelmap = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "blob")
        volumes.set_volume_array(labelmap, blob, *volumes.node_geometry_ras(reference))
        assert slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(labelmap, segmentation)
        ids = ids_of(segmentation)
        assert segmentation.GetSegmentation().GetNumberOfLayers() > 1
    assert segmentations._labels_from_shared_layer(segmentation, ids, reference, np.dtype(np.uint8)) is None
    got = segmentations._export_labelmap(segmentation, ids, reference, "check")
    expected = segmentations._slicer_export(segmentation, ids, reference, "check")
    assert np.array_equal(sitk.GetArrayViewFromImage(got), sitk.GetArrayViewFromImage(expected))
