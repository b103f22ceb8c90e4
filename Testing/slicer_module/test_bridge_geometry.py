"""The bridge's geometry conversions, checked against SimpleITK/ITK on real slicer-core nodes.

Cases are oblique (rotated), anisotropic and LPS-stored (i, j axes pointing left/posterior), the
cases where RAS <-> LPS mistakes show.
"""

import numpy as np
import pytest
import SimpleITK as sitk

import slicer
from VoxelOptRegistrationLib import phantom_nodes, transforms, volumes
from VoxelOptRegistrationLib.errors import InputNodeError


def _sitk_image(shape_kji, spacing, oblique_deg, seed=0):
    rng = np.random.default_rng(seed)
    img = sitk.GetImageFromArray(rng.normal(size=shape_kji).astype(np.float32))
    img.SetSpacing(tuple(spacing))
    img.SetOrigin((-5.0, 12.0, 30.0))
    img.SetDirection(phantom_nodes.oblique_direction(oblique_deg))
    return img


def test_sitk_volume_round_trip_keeps_voxels_and_physical_points(scene):
    image = _sitk_image((6, 7, 8), (1.3, 0.9, 2.5), 25.0)
    node = volumes.add_volume_node_from_sitk(scene, image, "v")
    # The same voxel (i, j, k) lands on the same physical point: ITK's LPS point = F * Slicer's RAS point.
    ijk2ras = volumes.ijk_to_ras_matrix(node)
    for index in [(0, 0, 0), (7, 6, 5), (3, 1, 4)]:
        ras = ijk2ras @ np.array([*index, 1.0])
        lps = np.array(image.TransformIndexToPhysicalPoint(index))
        np.testing.assert_allclose(volumes.LPS_TO_RAS @ ras[:3], lps, atol=1e-9)
    back = volumes.sitk_from_volume_node(node)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(image))
    np.testing.assert_allclose(back.GetOrigin(), image.GetOrigin(), atol=1e-9)
    np.testing.assert_allclose(back.GetDirection(), image.GetDirection(), atol=1e-9)
    np.testing.assert_allclose(back.GetSpacing(), image.GetSpacing(), atol=1e-12)


def _smooth_field(image, amplitude=3.0):
    """A smooth LPS-mm displacement field on ``image``'s grid."""
    size = image.GetSize()
    k, j, i = np.meshgrid(*[np.arange(n) for n in size[::-1]], indexing="ij")
    u = np.stack(
        [amplitude * np.sin(j / 5.0), -0.7 * amplitude * np.cos(i / 6.0 + k / 7.0), 0.5 * amplitude * np.sin(i / 4.0)], -1
    )
    field = sitk.GetImageFromArray(u.astype(np.float64), isVector=True)
    field.CopyInformation(image)
    return field


def test_grid_transform_resampled_by_slicer_matches_itk(scene):
    """The field as a FromParent grid transform, resampled by Slicer's volumes logic == ITK's warp.

    Reference: SimpleITK's Resample with a DisplacementFieldTransform (ITK convention
    warped(x) = moving(x + u(x))), linear interpolation. Tolerance 1e-4 of the intensity range
    (float32 storage and VTK vs ITK linear interpolation), inside the region where both sample
    the moving image.
    """
    fixed = _sitk_image((24, 26, 28), (1.7, 1.1, 2.3), 20.0, seed=1)
    # A smooth moving image on its own oblique grid (different size, spacing and rotation).
    moving = sitk.SmoothingRecursiveGaussian(_sitk_image((30, 28, 32), (1.4, 1.6, 2.0), 35.0, seed=2), 2.0)
    moving_arr = sitk.GetArrayFromImage(moving)
    field = _smooth_field(fixed)

    ref = sitk.Resample(moving, fixed, sitk.DisplacementFieldTransform(sitk.Image(field)), sitk.sitkLinear, 0.0, sitk.sitkFloat64)

    fixed_node = volumes.add_volume_node_from_sitk(scene, fixed, "fixed")
    moving_node = volumes.add_volume_node_from_sitk(scene, moving, "moving")
    tnode = scene.AddNewNodeByClass("vtkMRMLGridTransformNode", "field")
    transforms.set_field_on_transform_node(tnode, field, moving_node, fixed_node)
    moving_node.SetAndObserveTransformNodeID(tnode.GetID())
    out = slicer.vtkSlicerVolumesLogic.ResampleVolumeToReferenceVolume(moving_node, fixed_node)
    got = volumes.array_from_volume_node(out).astype(np.float64)
    want = sitk.GetArrayFromImage(ref)

    # Compare where the warped point is well inside the moving image (both sample it, no edge effects).
    ones = sitk.Image(moving.GetSize(), sitk.sitkFloat64) + 1.0
    ones.CopyInformation(moving)
    inside = sitk.GetArrayFromImage(
        sitk.Resample(ones, fixed, sitk.DisplacementFieldTransform(sitk.Image(field)), sitk.sitkLinear, 0.0, sitk.sitkFloat64)
    ) > 0.999
    assert inside.mean() > 0.3
    value_range = np.ptp(moving_arr)
    err = np.abs(got - want)[inside].max() / value_range
    assert err < 1e-4, f"max relative difference {err:.2e}"
    # The field must really move things: without the transform the result differs a lot.
    moving_node.SetAndObserveTransformNodeID(None)
    plain = volumes.array_from_volume_node(slicer.vtkSlicerVolumesLogic.ResampleVolumeToReferenceVolume(moving_node, fixed_node))
    assert np.abs(plain - want)[inside].max() / value_range > 0.05


def test_transform_node_is_from_parent_with_references(scene):
    fixed = _sitk_image((8, 9, 10), (1.0, 1.5, 2.0), 15.0)
    field = _smooth_field(fixed)
    fixed_node = volumes.add_volume_node_from_sitk(scene, fixed, "fixed")
    moving_node = volumes.add_volume_node_from_sitk(scene, fixed, "moving")
    tnode = scene.AddNewNodeByClass("vtkMRMLGridTransformNode", "field")
    transforms.set_field_on_transform_node(tnode, field, moving_node, fixed_node)
    from_parent = tnode.GetTransformFromParent()
    assert isinstance(from_parent, slicer.vtkOrientedGridTransform)
    assert from_parent.GetInverseFlag() == 0  # stored as FromParent, not as an inverted ToParent
    assert tnode.GetNodeReference(tnode.GetMovingNodeReferenceRole()) is moving_node
    assert tnode.GetNodeReference(tnode.GetFixedNodeReferenceRole()) is fixed_node
    # The stored grid is the field in RAS: F * u_LPS.
    u_ras = transforms.displacement_ras_from_transform_node(tnode)
    u_lps = sitk.GetArrayFromImage(field)
    np.testing.assert_allclose(u_ras, u_lps * np.array([-1.0, -1.0, 1.0]), atol=1e-12)
    # A fixed-grid voxel centre x maps (FromParent) to x + F u(x).
    ijk2ras = volumes.ijk_to_ras_matrix(fixed_node)
    x = (ijk2ras @ np.array([4, 5, 3, 1.0]))[:3]
    y = np.array(from_parent.TransformPoint(*x))
    np.testing.assert_allclose(y, x + u_ras[3, 5, 4], atol=1e-6)


def test_field_with_wrong_components_is_refused():
    scalar = sitk.Image(4, 4, 4, sitk.sitkFloat64)
    with pytest.raises(ValueError, match="3 components"):
        transforms.grid_transform_from_field(scalar)


@pytest.mark.parametrize(
    "make_bad, message",
    [
        (lambda n: n.SetSpacing(1.0, 0.0, 1.0), "spacing"),
        (lambda n: n.SetIJKToRASDirections(1, 0, 0, 1, 0, 0, 0, 0, 1), "orthonormal"),
        (lambda n: n.SetIJKToRASDirections(1, 0, 0, 0, 2, 0, 0, 0, 1), "not orthonormal"),  # refused by voxelopt.geometry
    ],
)
def test_bad_geometry_is_reported(scene, make_bad, message):
    node = volumes.add_volume_node_from_sitk(scene, _sitk_image((5, 5, 5), (1, 1, 1), 0.0), "bad")
    make_bad(node)
    with pytest.raises(InputNodeError, match=message) as info:
        volumes.sitk_from_volume_node(node, "fixed")
    assert "'bad'" in str(info.value)


def test_nan_and_2d_volumes_are_reported(scene):
    arr = np.zeros((5, 6, 7), np.float32)
    arr[2, 3, 4] = np.nan
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "withnan")
    volumes.set_volume_array(node, arr, np.zeros(3), np.ones(3), np.eye(3))
    with pytest.raises(InputNodeError, match="1 NaN"):
        volumes.sitk_from_volume_node(node, "moving")
    flat = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "flat")
    volumes.set_volume_array(flat, np.zeros((1, 6, 7), np.float32), np.zeros(3), np.ones(3), np.eye(3))
    with pytest.raises(InputNodeError, match="not 3-D"):
        volumes.sitk_from_volume_node(flat, "moving")
    empty = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "empty")
    with pytest.raises(InputNodeError, match="no image data"):
        volumes.sitk_from_volume_node(empty, "fixed")


def test_foreign_parent_transform_is_refused_but_voxelopt_transform_ignored(scene):
    node = volumes.add_volume_node_from_sitk(scene, _sitk_image((5, 5, 5), (1, 1, 1), 0.0), "m")
    linear = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "manual")
    node.SetAndObserveTransformNodeID(linear.GetID())
    with pytest.raises(InputNodeError, match="harden"):
        volumes.parent_transform_check(node)
    ours = scene.AddNewNodeByClass("vtkMRMLGridTransformNode", "previous run")
    ours.SetAttribute(volumes.ROLE_ATTRIBUTE, "transform")
    node.SetAndObserveTransformNodeID(ours.GetID())
    volumes.parent_transform_check(node)  # no error
    with pytest.raises(InputNodeError):
        volumes.parent_transform_check(node, ignore_roles=())


def test_labels_round_trip_through_a_segmentation_on_an_oblique_grid(scene):
    """Label maps become segments and come back as the same voxels on the reference grid: the
    import hands Slicer only the labelled box (a crop of the same grid), which must not move a
    voxel; a label map with no label gives no segment."""
    from VoxelOptRegistrationLib import segmentations

    reference = _sitk_image((14, 16, 18), (1.3, 0.9, 2.5), 25.0)
    reference_node = volumes.add_volume_node_from_sitk(scene, reference, "reference")
    array = np.zeros((14, 16, 18), np.uint8)
    array[3:7, 5:12, 2:6] = 2
    array[8:10, 1:4, 9:17] = 5  # two labels in an off-centre box
    labels = sitk.GetImageFromArray(array)
    labels.CopyInformation(reference)
    node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "segments")
    segmentations.update_segmentation_from_labels(node, labels, {2: "two", 5: "five"}, None, reference_node)
    assert segmentations.segment_names(node) == ["two", "five"]
    ids = [node.GetSegmentation().GetSegmentIdBySegmentName(name) for name in ("two", "five")]
    back = segmentations.export_labelmap(node, ids, reference_node, "round trip")
    expected = np.select([array == 2, array == 5], [1, 2], 0)  # exported as 1..n in the given order
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back), expected)
    # importing again replaces the segments (one label now) and keeps the user's conversion parameters
    node.GetSegmentation().SetConversionParameter("Smoothing factor", "0.25")
    only_five = sitk.GetImageFromArray(np.where(array == 5, 5, 0).astype(np.uint8))
    only_five.CopyInformation(reference)
    segmentations.update_segmentation_from_labels(node, only_five, {5: "five"}, None, reference_node)
    assert segmentations.segment_names(node) == ["five"]
    assert node.GetSegmentation().GetConversionParameter("Smoothing factor") == "0.25"
    back = segmentations.export_labelmap(node, [node.GetSegmentation().GetSegmentIdBySegmentName("five")],
                                         reference_node, "round trip")
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back), (array == 5).astype(np.uint8))
    empty = sitk.GetImageFromArray(np.zeros_like(array))
    empty.CopyInformation(reference)
    segmentations.update_segmentation_from_labels(node, empty, {}, None, reference_node)
    assert segmentations.segment_names(node) == []


def test_a_shared_image_is_the_nodes_voxels_and_outlives_its_last_reference(scene):
    """``share=True``: the node's voxels are the SimpleITK image's own buffer (no copy), kept
    alive by VTK after the caller drops the image; without it the voxels are copied."""
    import gc

    def address(array):
        return array.__array_interface__["data"][0]

    image = _sitk_image((30, 20, 10), (0.8, 0.9, 1.5), 0.0)
    expected = sitk.GetArrayFromImage(image)
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "shared")
    volumes.update_volume_node_from_sitk(node, image, share=True)
    assert address(volumes._voxel_view(node)) == address(sitk.GetArrayViewFromImage(image))
    del image
    gc.collect()
    clutter = [np.full(expected.shape, -7.0, expected.dtype) for _ in range(20)]  # would reuse freed memory
    np.testing.assert_array_equal(volumes.array_from_volume_node(node), expected)
    del clutter
    copied = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "copied")
    source = _sitk_image((30, 20, 10), (0.8, 0.9, 1.5), 0.0)
    volumes.update_volume_node_from_sitk(copied, source)
    assert address(volumes._voxel_view(copied)) != address(sitk.GetArrayViewFromImage(source))
    with pytest.raises(ValueError, match="writable"):
        volumes.set_volume_array(node, sitk.GetArrayViewFromImage(source), np.zeros(3), np.ones(3), np.eye(3), owner=source)
