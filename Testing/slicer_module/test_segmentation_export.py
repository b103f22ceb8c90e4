"""The segmentations' label-map export read straight from a shared labelmap layer equals Slicer's
own export (ExportSegmentsToLabelmapNode), voxel for voxel and in geometry; anything it does not
cover falls back to Slicer's export. Real slicer-core, oblique LPS-stored phantom volumes."""

import numpy as np
import pytest
import SimpleITK as sitk

from slicer_test_helpers import add_segment, requires_engine
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


def losses_in_slicers_export(segmentation, ids, reference):
    """{segment id: whether none of its voxels is left} for the segments that Slicer's own export of
    all of them gives fewer voxels than its export of that segment alone."""
    together = sitk.GetArrayFromImage(segmentations._slicer_export(segmentation, ids, reference, "together"))
    losses = {}
    for label, sid in enumerate(ids, start=1):
        alone = np.count_nonzero(sitk.GetArrayFromImage(segmentations._slicer_export(segmentation, [sid], reference, "alone")))
        kept = np.count_nonzero(together == label)
        if kept < alone:
            losses[sid] = kept == 0
    return losses


@pytest.mark.parametrize("case", ["a blob over some segments", "a container after the organs",
                                  "a container before the organs", "a layer on another grid"])
def test_overlapping_segments_are_found_as_slicers_export_cuts_them(scene, monkeypatch, case):
    """segment_overlaps names exactly the segments that Slicer's export (a voxel takes the last
    segment's label) cuts or hides, with the later segments that take their voxels."""
    nodes = phantom_nodes.add_phantom_volumes(scene, with_segmentations=True)
    reference = nodes["fixed"]
    segmentation = nodes["fixed_segmentation"]
    organs = sitk.GetArrayFromImage(segmentations.export_labelmap(segmentation, ids_of(segmentation), reference, "organs"))
    blob = np.zeros(organs.shape, np.int16)
    blob[8:14, 10:20, 10:18] = 1  # over parts of some organs
    if case == "a container before the organs":
        segmentation = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "container first")
        segmentation.SetReferenceImageGeometryParameterFromVolumeNode(reference)
        add_segment(scene, segmentation, (organs > 0) | (blob > 0), reference, "abdomen")
        add_segment(scene, segmentation, organs, reference, "organs")
    else:
        add_segment(scene, segmentation, blob if case != "a container after the organs" else organs > 0, reference, "over")
    layers = segmentation.GetSegmentation()
    assert layers.GetNumberOfLayers() == 2
    ids = ids_of(segmentation)
    expected = losses_in_slicers_export(segmentation, ids, reference)
    overlaps = segmentations.segment_overlaps(segmentation, ids)
    assert expected and {sid: hidden for sid, (_, hidden) in overlaps.items()} == expected
    if case == "a layer on another grid":  # the blob's layer moved by a third of a voxel: resampled, same voxels
        data = layers.GetLayerDataObject(layers.GetLayerIndex(ids[-1]))
        matrix = segmentations._layer_to_ras(data)
        matrix[:3, 3] += matrix[:3, 0] / 3.0
        data.SetImageToWorldMatrix(slicer_matrix(matrix))
        resampled = []
        monkeypatch.setattr(segmentations.slicer, "vtkOrientedImageDataResample", ResampleSpy(resampled))
        assert segmentations.segment_overlaps(segmentation, ids) == overlaps and len(resampled) == 1
    if case == "a container after the organs":
        assert set(overlaps) == set(ids[:-1]) and all(winners == (ids[-1],) for winners, _ in overlaps.values())
    if case == "a container before the organs":
        assert list(overlaps) == [ids[0]] and set(overlaps[ids[0]][0]) == set(ids[1:]) - {None}
    warnings = segmentations.overlap_warnings("fixed", segmentation, overlaps, "the fixed segmentation's")
    assert len(warnings) == len(overlaps)
    name = layers.GetSegment(next(iter(overlaps))).GetName()
    assert f"fixed segmentation '{segmentation.GetName()}': segment '{name}' overlaps" in warnings[0]
    assert "later in the fixed segmentation's segment order" in warnings[0] and "keep" in warnings[0]
    assert ("no voxel left in the label map, so it is not scored" in warnings[0]) == overlaps[next(iter(overlaps))][1]


class ResampleSpy:
    """Slicer's ``vtkOrientedImageDataResample``, recording each resampling in ``calls``."""

    def __init__(self, calls):
        import slicer

        self.calls, self.real = calls, slicer.vtkOrientedImageDataResample

    def ResampleOrientedImageToReferenceOrientedImage(self, *args):
        self.calls.append(args)
        return self.real.ResampleOrientedImageToReferenceOrientedImage(*args)


def slicer_matrix(array):
    import vtk

    matrix = vtk.vtkMatrix4x4()
    matrix.DeepCopy(np.asarray(array, float).ravel())
    return matrix


def test_segments_in_one_layer_are_not_read_for_overlaps(scene, monkeypatch):
    """One shared labelmap layer (the usual case) cannot hold overlapping segments: nothing is read."""
    nodes = phantom_nodes.add_phantom_volumes(scene, with_segmentations=True)
    monkeypatch.setattr(segmentations, "_layers_on_one_grid", lambda *args: pytest.fail("read the layers"))
    segmentation = nodes["moving_segmentation"]
    assert segmentation.GetSegmentation().GetNumberOfLayers() == 1
    assert segmentations.segment_overlaps(segmentation, ids_of(segmentation)) == {}
    warnings = []
    segmentations.labelmaps_for_registration(nodes["fixed_segmentation"], segmentation, nodes["fixed"], nodes["moving"],
                                             segmentations.ExportCache(), warnings)
    assert warnings == []
