"""The Logic end to end on real slicer-core: engine outputs as MRML nodes, caching, cancel, errors.

Volumes are the engine's abdominal CT phantom as MRML nodes (40x34x24 fixed, 36x40x22 moving), oblique,
anisotropic and LPS-stored, with different fixed and moving grids; the "fast" preset with 2 levels
keeps each registration to about 2 s on 2 CPU cores.
"""

import numpy as np
import pytest
import SimpleITK as sitk

import slicer
from slicer_test_helpers import current_scene, requires_engine
from VoxelOptRegistrationLib import RegistrationLogic, RegistrationOutputs, colors, parameters, phantom_nodes, volumes
from VoxelOptRegistrationLib.errors import InputNodeError, VoxelOptSlicerError
from voxelopt.phantom import LABEL_NAMES
from voxelopt import InputError

pytestmark = requires_engine

MOVING_GEOMETRY = ((36, 40, 22), (10.0, 8.0, 9.0), 35.0)


def fast_config(**changes):
    import voxelopt

    return voxelopt.RegistrationConfig.preset("fast", **{"levels": 2, "feature_spacing": 5.0, "device": "cpu", **changes})


def scene_snapshot(scene):
    """Everything Apply could change: the nodes, the moving volume's parent, output contents."""
    nodes = []
    for i in range(scene.GetNumberOfNodes()):
        node = scene.GetNthNode(i)
        content = None
        if node.IsA("vtkMRMLVolumeNode") and node.GetImageData() is not None:
            content = node.GetImageData().GetMTime()
        elif node.IsA("vtkMRMLTransformNode") and node.GetTransformFromParent() is not None:
            content = node.GetTransformFromParent().GetMTime()
        parent = node.GetTransformNodeID() if node.IsA("vtkMRMLTransformableNode") else None
        nodes.append((node.GetID(), node.GetClassName(), node.GetName(), content, parent))
    return sorted(nodes, key=lambda item: item[0])


@pytest.fixture(scope="module")
def registered():
    """One registration with segmentations, shared by the tests that only read its results."""
    with current_scene() as scene:
        nodes = phantom_nodes.add_phantom_volumes(scene, with_segmentations=True, moving_geometry=MOVING_GEOMETRY)
        logic = RegistrationLogic(scene)
        messages = []
        run = logic.process(
            nodes["fixed"],
            nodes["moving"],
            fast_config(),
            fixedSegmentation=nodes["fixed_segmentation"],
            movingSegmentation=nodes["moving_segmentation"],
            progress=lambda fraction, message: messages.append((fraction, message)),
        )
        yield {"scene": scene, "nodes": nodes, "logic": logic, "run": run, "progress": messages}


def test_transform_node_warps_moving_live_with_references(registered):
    run, nodes = registered["run"], registered["nodes"]
    transform = run.transform
    assert transform.IsA("vtkMRMLGridTransformNode")
    assert isinstance(transform.GetTransformFromParent(), slicer.vtkOrientedGridTransform)
    assert transform.GetTransformFromParent().GetInverseFlag() == 0  # stored as FromParent (resampling)
    assert transform.GetNodeReference(transform.GetMovingNodeReferenceRole()) is nodes["moving"]
    assert transform.GetNodeReference(transform.GetFixedNodeReferenceRole()) is nodes["fixed"]
    assert nodes["moving"].GetParentTransformNode() is transform  # showResult: live warp
    assert nodes["fixed"].GetParentTransformNode() is None


def test_slicer_resampling_through_transform_gives_engine_warped_image(registered):
    """Slicer's own volumes logic resampling the moving volume through the transform node
    reproduces the engine's warped image (tolerance: 1e-4 of the intensity range), wherever the
    warped point lies inside the moving image (outside, Slicer pads with 0, the engine with the
    moving image's minimum)."""
    scene, run, nodes = registered["scene"], registered["run"], registered["nodes"]
    fixed, moving = nodes["fixed"], nodes["moving"]
    resampled = slicer.vtkSlicerVolumesLogic.ResampleVolumeToReferenceVolume(moving, fixed)
    ones = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "ones")
    volumes.set_volume_array(ones, np.ones(MOVING_GEOMETRY[0][::-1], np.float32), *volumes.node_geometry_ras(moving))
    ones.SetAndObserveTransformNodeID(run.transform.GetID())
    inside = volumes.array_from_volume_node(slicer.vtkSlicerVolumesLogic.ResampleVolumeToReferenceVolume(ones, fixed)) > 0.999
    try:
        got = volumes.array_from_volume_node(resampled).astype(np.float64)
        engine = volumes.array_from_volume_node(run.warpedVolume).astype(np.float64)
        value_range = np.ptp(volumes.array_from_volume_node(moving))
        assert inside.mean() > 0.5
        error = np.abs(got - engine)[inside].max() / value_range
        assert error < 1e-4, f"max difference {error:.2e} of the intensity range"
        # and the warp is not the identity: the unwarped moving volume on the fixed grid differs
        moving.SetAndObserveTransformNodeID(None)
        plain = volumes.array_from_volume_node(slicer.vtkSlicerVolumesLogic.ResampleVolumeToReferenceVolume(moving, fixed))
        both_inside = inside & (plain > -999)
        assert np.abs(plain - engine)[both_inside].mean() > 5.0
    finally:
        moving.SetAndObserveTransformNodeID(run.transform.GetID())
        for node in (resampled, ones):
            scene.RemoveNode(node)


def box_corners(node):
    """RAS corners of the box covered by a volume's voxels (voxel centres +- half a voxel)."""
    dims = np.array(node.GetImageData().GetDimensions())
    corners = np.array([[i, j, k, 1.0] for i in (-0.5, dims[0] - 0.5) for j in (-0.5, dims[1] - 0.5) for k in (-0.5, dims[2] - 0.5)])
    return (corners @ volumes.ijk_to_ras_matrix(node).T)[:, :3]


def test_output_maps_have_fixed_geometry_and_colour_tables(registered):
    run, fixed = registered["run"], registered["nodes"]["fixed"]
    assert run.warpedVolume.GetImageData().GetDimensions() == fixed.GetImageData().GetDimensions()
    np.testing.assert_allclose(volumes.ijk_to_ras_matrix(run.warpedVolume), volumes.ijk_to_ras_matrix(fixed), rtol=0, atol=1e-9)
    warped_display, moving_display = run.warpedVolume.GetDisplayNode(), registered["nodes"]["moving"].GetDisplayNode()
    assert not warped_display.GetAutoWindowLevel()  # the moving volume's window, not one computed from the voxels
    assert (warped_display.GetWindow(), warped_display.GetLevel()) == (moving_display.GetWindow(), moving_display.GetLevel())
    for node in (run.entropyVolume, run.jacobianVolume):  # on their own grids, over the fixed volume's box
        np.testing.assert_allclose(box_corners(node), box_corners(fixed), atol=1e-3)
    assert np.prod(run.entropyVolume.GetImageData().GetDimensions()) < np.prod(fixed.GetImageData().GetDimensions())
    entropy_display = run.entropyVolume.GetDisplayNode()
    entropy_color = entropy_display.GetColorNode()
    assert entropy_color.GetAttribute(colors.COLOR_ROLE_ATTRIBUTE) == "entropy"
    assert entropy_color.GetNumberOfColors() == 256
    entropy = volumes.array_from_volume_node(run.entropyVolume)
    assert entropy.min() >= 0 and entropy.max() > 0  # nats
    # Only flat distributions (entropy at the map's maximum: air, padding) are transparent; the
    # colours span the informative voxels, from their 1st percentile to the maximum.
    flat = entropy >= entropy.max() * (1 - colors.FLAT_ENTROPY_TOLERANCE)
    assert flat.any() and not flat.all()
    informative = entropy[~flat]
    assert entropy_display.GetWindowLevelMin() == pytest.approx(float(np.percentile(informative, 1)), rel=1e-5)
    assert entropy_display.GetWindowLevelMax() == pytest.approx(float(entropy.max()), rel=1e-5)
    assert entropy_display.GetApplyThreshold()
    shown = (entropy >= entropy_display.GetLowerThreshold()) & (entropy <= entropy_display.GetUpperThreshold())
    np.testing.assert_array_equal(shown[~flat], True)
    assert not shown[flat & (entropy > entropy_display.GetUpperThreshold())].any()

    for node, quantity, units in ((run.entropyVolume, "displacement entropy", "nats"),
                                  (run.jacobianVolume, "Jacobian determinant", "ratio")):
        assert node.GetVoxelValueQuantity().GetCodeMeaning() == quantity
        assert node.GetVoxelValueUnits().GetCodeMeaning() == units
    # one colour legend per map, on its display (its colours and window), with the quantity as title
    for node, role in ((run.entropyVolume, "entropy"), (run.jacobianVolume, "jacobian")):
        legends = [node.GetNthDisplayNode(i) for i in range(node.GetNumberOfDisplayNodes())
                   if node.GetNthDisplayNode(i).IsA(colors.LEGEND_CLASS)]
        assert len(legends) == 1 and legends[0].GetPrimaryDisplayNode() is node.GetVolumeDisplayNode()
        assert legends[0].GetTitleText() == colors.LEGEND_TITLES[role] and legends[0].GetVisibility()

    jac_display = run.jacobianVolume.GetDisplayNode()
    jac_color = jac_display.GetColorNode()
    assert jac_color.GetAttribute(colors.COLOR_ROLE_ATTRIBUTE) == "jacobian"
    low, high = jac_display.GetWindowLevelMin(), jac_display.GetWindowLevelMax()
    assert (low + high) / 2 == pytest.approx(1.0)  # centred at 1
    # Table entries: black (adds nothing) at 1, blue below, red above, green for det J <= 0.
    rgba = [0.0] * 4

    def colour_at(value):
        index = int((value - low) / (high - low) * jac_color.GetNumberOfColors())
        jac_color.GetColor(index, rgba)
        return np.array(rgba[:3])

    assert np.all(colour_at(1.0) < 0.02)
    assert colour_at(0.5)[2] > colour_at(0.5)[0] + 0.2  # blue
    assert colour_at(2.0)[0] > colour_at(2.0)[2] + 0.2  # red
    folding = colour_at(-0.1)
    assert folding[1] > 0.8 and folding[0] < 0.1 and folding[2] < 0.1  # green: folding stands out
    jac = volumes.array_from_volume_node(run.jacobianVolume)
    folding_percent = 100.0 * np.mean(jac <= 0)
    assert run.metrics["folding_percent"] == pytest.approx(folding_percent, abs=1e-6)


def test_warped_segmentation_and_dice_table(registered):
    run, nodes = registered["run"], registered["nodes"]
    seg = run.warpedSegmentation
    assert seg is not None and seg.IsA("vtkMRMLSegmentationNode")
    names = [seg.GetSegmentation().GetNthSegment(i).GetName() for i in range(seg.GetSegmentation().GetNumberOfSegments())]
    assert sorted(names) == sorted(LABEL_NAMES.values())
    table = run.diceTable.GetTable()
    rows = {table.GetValueByName(r, "Segment").ToString(): table.GetValueByName(r, "Dice").ToDouble() for r in range(table.GetNumberOfRows())}
    assert rows == pytest.approx(run.dice)
    assert set(rows) == set(LABEL_NAMES.values())
    moving_seg = nodes["moving_segmentation"].GetSegmentation()
    position = {moving_seg.GetNthSegment(i).GetName(): i + 1 for i in range(moving_seg.GetNumberOfSegments())}
    assert {table.GetValueByName(r, "Segment").ToString(): table.GetValueByName(r, "Segment number").ToInt()
            for r in range(table.GetNumberOfRows())} == position  # the position, not an organ code
    assert all(0.0 <= v <= 1.0 for v in rows.values())
    # Recompute the Dice of one segment from the nodes themselves (fixed grid, label maps).
    from VoxelOptRegistrationLib import segmentations

    fixed_seg = nodes["fixed_segmentation"]
    liver_fixed = segmentations.export_labelmap(
        fixed_seg, [fixed_seg.GetSegmentation().GetSegmentIdBySegmentName("liver")], nodes["fixed"], "fixed"
    )
    liver_warped = segmentations.export_labelmap(seg, [seg.GetSegmentation().GetSegmentIdBySegmentName("liver")], nodes["fixed"], "w")
    import SimpleITK as sitk

    a, b = sitk.GetArrayFromImage(liver_fixed) > 0, sitk.GetArrayFromImage(liver_warped) > 0
    assert rows["liver"] == pytest.approx(2 * (a & b).sum() / (a.sum() + b.sum()), abs=1e-6)
    # The registration improved the mean overlap over no registration at all.
    fixed_labels, moving_labels, names, _ = segmentations.labelmaps_for_registration(
        fixed_seg, nodes["moving_segmentation"], nodes["fixed"], nodes["moving"]
    )
    f = sitk.GetArrayFromImage(fixed_labels)
    m = sitk.GetArrayFromImage(sitk.Resample(moving_labels, fixed_labels, sitk.Transform(), sitk.sitkNearestNeighbor))
    identity = np.mean([2 * ((f == l) & (m == l)).sum() / ((f == l).sum() + (m == l).sum()) for l in names])
    assert np.mean(list(rows.values())) > identity + 0.015  # measured 0.816 -> 0.841 on this coarse (9 mm) phantom


def test_progress_reports_each_pyramid_level(registered):
    fractions = [f for f, _ in registered["progress"]]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert sum("level" in message for _, message in registered["progress"]) == 2
    assert "level_1" in registered["run"].timings and "slicer_output" in registered["run"].timings
    text = registered["run"].summary()
    assert "SDlogJ" in text and "Folding" in text and "liver" in text


def test_solver_only_change_reuses_features_and_output_nodes(scene):
    nodes = phantom_nodes.add_phantom_volumes(scene)
    logic = RegistrationLogic(scene)
    first = logic.process(nodes["fixed"], nodes["moving"], fast_config(), showResult=False)
    cache = logic.featureCache
    assert not first.featureCacheHit and (cache.hits, cache.misses) == (0, 4)  # features and cost masks
    count = scene.GetNumberOfNodes()
    outputs = RegistrationOutputs(first.transform, first.warpedVolume, first.entropyVolume, first.jacobianVolume)
    second = logic.process(nodes["fixed"], nodes["moving"], fast_config(alpha=3.0, thetas=(20.0, 2.0)), outputs=outputs, showResult=False)
    assert second.featureCacheHit and (cache.hits, cache.misses) == (4, 4)
    assert "features_fixed" in second.timings
    assert scene.GetNumberOfNodes() == count and second.transform is first.transform and second.createdNodeIDs == []
    # A feature parameter (the intensity window) changes the features: recomputed.
    third = logic.process(nodes["fixed"], nodes["moving"], fast_config(hu_window=(-900.0, 400.0)), outputs=outputs, showResult=False)
    # the features, and both masks: they depend on the window's low end (two padding values below
    # it count as one), and the centre-of-mass start moves with the window
    assert not third.featureCacheHit and cache.misses == 8
    # The moving volume's voxels changing also means new features.
    arr = volumes.array_from_volume_node(nodes["moving"]) + 10.0
    volumes.set_volume_array(nodes["moving"], arr, *volumes.node_geometry_ras(nodes["moving"]))
    fourth = logic.process(nodes["fixed"], nodes["moving"], fast_config(hu_window=(-900.0, 400.0)), outputs=outputs, showResult=False)
    assert not fourth.featureCacheHit and cache.misses == 10  # the fixed features and mask still come from the cache


def test_segmentation_exports_are_reused_until_their_content_changes(scene, monkeypatch):
    """A re-run reuses the segmentations' label-map exports (Slicer's export is the slow part of
    reading the scene); editing a segment's voxels, even in place without a Modified event,
    exports that segmentation again, and the run scores the edited segments."""
    from vtkmodules.util import numpy_support

    from VoxelOptRegistrationLib import segmentations

    nodes = phantom_nodes.add_phantom_volumes(scene, with_segmentations=True, moving_geometry=MOVING_GEOMETRY)
    exported = []
    original = segmentations._export_labelmap
    monkeypatch.setattr(segmentations, "_export_labelmap",
                        lambda node, *args: exported.append(node.GetName()) or original(node, *args))
    logic = RegistrationLogic(scene)
    segs = (nodes["fixed_segmentation"], nodes["moving_segmentation"])
    first = logic.process(nodes["fixed"], nodes["moving"], fast_config(), *segs, showResult=False)
    assert len(exported) == 2 and "liver" in first.dice
    second = logic.process(nodes["fixed"], nodes["moving"], fast_config(alpha=3.0), *segs, showResult=False)
    assert len(exported) == 2 and set(second.dice) == set(first.dice)  # both exports reused
    # the moving liver erased in place in its labelmap layer
    segmentation = nodes["moving_segmentation"].GetSegmentation()
    liver = segmentation.GetSegmentIdBySegmentName("liver")
    layer = numpy_support.vtk_to_numpy(segmentation.GetLayerDataObject(segmentation.GetLayerIndex(liver))
                                       .GetPointData().GetScalars())
    layer[layer == segmentation.GetSegment(liver).GetLabelValue()] = 0
    third = logic.process(nodes["fixed"], nodes["moving"], fast_config(alpha=3.0), *segs, showResult=False)
    assert exported[2:] == [nodes["moving_segmentation"].GetName()]  # only the edited one again
    assert "liver" not in third.dice and set(third.dice) == set(first.dice) - {"liver"}
    logic.cacheSegmentationExports = False
    logic.process(nodes["fixed"], nodes["moving"], fast_config(alpha=3.0), *segs, showResult=False)
    assert len(exported) == 5


def test_volume_copies_are_reused_until_their_voxels_change(scene, monkeypatch):
    """A re-run hands the engine the same copies of unchanged volumes, whose digests it then
    does not compute again; a voxel edited in place (no Modified event) or a new geometry makes
    a new copy, and the run registers the edited voxels."""
    import voxelopt.digest

    from VoxelOptRegistrationLib import volumes as volume_module

    nodes = phantom_nodes.add_phantom_volumes(scene)
    copies = []
    original = volume_module.sitk_from_volume_node
    monkeypatch.setattr(volume_module, "sitk_from_volume_node",
                        lambda node, *args: copies.append(node.GetName()) or original(node, *args))
    digested = []
    digest = voxelopt.digest.image_digest
    monkeypatch.setattr(voxelopt.digest, "image_digest", lambda image: digested.append(image) or digest(image))
    logic = RegistrationLogic(scene)
    first = logic.prepare(nodes["fixed"], nodes["moving"], fast_config())
    logic.compute(first.engineInputs)
    assert len(copies) == 2 and len(digested) == 2
    second = logic.prepare(nodes["fixed"], nodes["moving"], fast_config(alpha=3.0))
    assert second.engineInputs.moving_image is first.engineInputs.moving_image
    computed = logic.compute(second.engineInputs)
    assert len(copies) == 2 and len(digested) == 2 and computed.cacheHit
    view = volume_module._voxel_view(nodes["moving"])
    view[3, 4, 5] += 100  # in place, no Modified event
    third = logic.prepare(nodes["fixed"], nodes["moving"], fast_config(alpha=3.0))
    assert copies[2:] == [nodes["moving"].GetName()]
    assert sitk.GetArrayViewFromImage(third.engineInputs.moving_image)[3, 4, 5] == view[3, 4, 5]
    computed = logic.compute(third.engineInputs)
    assert not computed.cacheHit and len(digested) == 3  # the new moving copy's features
    nodes["fixed"].SetOrigin(*(np.array(nodes["fixed"].GetOrigin()) + 1.0))
    logic.prepare(nodes["fixed"], nodes["moving"], fast_config())
    assert copies[3:] == [nodes["fixed"].GetName()]
    logic.cacheVolumeCopies = False
    logic.prepare(nodes["fixed"], nodes["moving"], fast_config())
    assert len(copies) == 6
    logic.cacheVolumeCopies = True
    logic.prepare(nodes["fixed"], nodes["moving"], fast_config())
    logic.prepare(nodes["fixed"], nodes["moving"], fast_config())
    assert len(copies) == 8  # kept again
    logic.clearCaches()  # what the module does when the scene closes
    assert len(logic.featureCache) == 0
    logic.prepare(nodes["fixed"], nodes["moving"], fast_config())
    assert len(copies) == 10


def test_input_warnings_head_the_run_summary(scene):
    """Volumes that do not look like CT in HU (no voxel below 0) are registered, and the run's
    summary (the module's results box) starts with the engine's warnings about them; one such
    volume against one in HU is refused with the engine's message, and no output node is made."""
    nodes = phantom_nodes.add_phantom_volumes(scene)
    hu_fixed = volumes.array_from_volume_node(nodes["fixed"])
    for name in ("fixed", "moving"):
        raw = volumes.array_from_volume_node(nodes[name]) + 1100.0
        volumes.set_volume_array(nodes[name], raw, *volumes.node_geometry_ras(nodes[name]))
    with pytest.warns(UserWarning, match="moving image: no voxel below 0"):
        run = RegistrationLogic(scene).process(nodes["fixed"], nodes["moving"], fast_config(), showResult=False)
    assert len(run.warnings) == 2 and run.summary().startswith("Warning: fixed image: no voxel below 0")
    volumes.set_volume_array(nodes["fixed"], hu_fixed, *volumes.node_geometry_ras(nodes["fixed"]))
    before = scene.GetNumberOfNodes()
    with pytest.raises(InputError, match="the moving image has no voxel below 0 .* different units"):
        RegistrationLogic(scene).process(nodes["fixed"], nodes["moving"], fast_config(), showResult=False)
    assert scene.GetNumberOfNodes() == before


def test_the_warped_volume_is_computed_with_the_engine_not_while_writing(scene, monkeypatch):
    """compute (a worker thread in the GUI) warps the moving volume onto the fixed grid, with
    progress and cancel; apply (the GUI thread) only writes it into its node."""
    import voxelopt
    import voxelopt.result

    nodes = phantom_nodes.add_phantom_volumes(scene)
    logic = RegistrationLogic(scene)
    request = logic.prepare(nodes["fixed"], nodes["moving"], fast_config())
    messages = []
    computed = logic.compute(request.engineInputs, lambda fraction, message: messages.append((fraction, message)))
    fractions = [fraction for fraction, _ in messages]
    warping = [fraction for fraction, message in messages if message == "warping the moving image"]
    assert fractions == sorted(fractions) and warping and messages[-1] == (1.0, "registered")
    assert "warp" in computed.result.timings and computed.result._warped is not None
    monkeypatch.setattr(voxelopt.result.RegistrationResult, "warp", lambda *args, **kwargs: pytest.fail("warped in apply"))
    run = logic.apply(request, computed, showResult=False)
    assert run.warpedVolume is not None
    monkeypatch.undo()
    from voxelopt import outputs

    monkeypatch.setattr(outputs, "SLAB_VOXELS", 1)  # a slab per slice: cancel is polled between them
    before = scene_snapshot(scene)
    warping = []
    with pytest.raises(voxelopt.RegistrationCancelled):  # cancelled during the warp: nothing written
        logic.process(nodes["fixed"], nodes["moving"], fast_config(alpha=3.0), showResult=False,
                      progress=lambda fraction, message: warping.append(message == "warping the moving image"),
                      cancel=lambda: any(warping))
    assert any(warping) and scene_snapshot(scene) == before


def test_cancel_leaves_the_scene_as_before(scene):
    import voxelopt

    nodes = phantom_nodes.add_phantom_volumes(scene, with_segmentations=True)
    logic = RegistrationLogic(scene)
    before = scene_snapshot(scene)
    with pytest.raises(voxelopt.RegistrationCancelled):
        logic.process(nodes["fixed"], nodes["moving"], fast_config(), nodes["fixed_segmentation"], nodes["moving_segmentation"], cancel=lambda: True)
    assert scene_snapshot(scene) == before  # no output node, moving not under a transform

    # After a successful run, a cancelled re-run must not touch the existing outputs either.
    run = logic.process(nodes["fixed"], nodes["moving"], fast_config(), nodes["fixed_segmentation"], nodes["moving_segmentation"])
    outputs = RegistrationOutputs(run.transform, run.warpedVolume, run.entropyVolume, run.jacobianVolume, run.warpedSegmentation, run.diceTable)
    before = scene_snapshot(scene)
    warped_before = volumes.array_from_volume_node(run.warpedVolume).copy()
    calls = []

    def cancel_in_pyramid():
        calls.append(1)
        return len(calls) > 3  # let the features through, stop in the solver

    with pytest.raises(voxelopt.RegistrationCancelled):
        logic.process(nodes["fixed"], nodes["moving"], fast_config(alpha=2.5), nodes["fixed_segmentation"], nodes["moving_segmentation"],
                      outputs=outputs, cancel=cancel_in_pyramid)
    assert len(calls) > 3
    assert scene_snapshot(scene) == before
    np.testing.assert_array_equal(volumes.array_from_volume_node(run.warpedVolume), warped_before)


@pytest.mark.parametrize("problem", ["nan", "geometry", "engine"])
def test_bad_input_gives_clear_error_and_no_new_nodes(scene, problem):
    import voxelopt

    nodes = phantom_nodes.add_phantom_volumes(scene)
    logic = RegistrationLogic(scene)
    config = fast_config()
    if problem == "nan":
        arr = volumes.array_from_volume_node(nodes["moving"])
        arr[10, 10, 10] = np.nan
        volumes.set_volume_array(nodes["moving"], arr, *volumes.node_geometry_ras(nodes["moving"]))
        expected, match = InputNodeError, "moving volume 'moving' contains 1 NaN"
    elif problem == "geometry":
        nodes["fixed"].SetIJKToRASDirections(1, 0, 0, 0, 1, 0, 0, 1, 0)  # two identical axes
        expected, match = InputNodeError, "fixed volume 'fixed' has bad geometry"
    else:
        config = fast_config(levels=7)  # too many levels for a 40-voxel image: the engine refuses
        expected, match = voxelopt.InputError, "too small for 7 pyramid levels"
    before = scene_snapshot(scene)
    with pytest.raises(expected, match=match):
        logic.process(nodes["fixed"], nodes["moving"], config)
    assert scene_snapshot(scene) == before


def test_views_are_set_up_when_the_scene_has_slice_views(scene):
    nodes = phantom_nodes.add_phantom_volumes(scene)
    composite = scene.AddNewNodeByClass("vtkMRMLSliceCompositeNode")
    logic = RegistrationLogic(scene)
    run = logic.process(nodes["fixed"], nodes["moving"], fast_config(), overlay="jacobian", overlayOpacity=0.6)
    assert composite.GetBackgroundVolumeID() == nodes["fixed"].GetID()
    assert composite.GetForegroundVolumeID() == run.jacobianVolume.GetID()
    assert composite.GetForegroundOpacity() == pytest.approx(0.6)
    assert composite.GetCompositing() == composite.Add  # the Jacobian adds to the CT (black at det J = 1)


def test_the_warped_volume_can_be_left_out(scene, monkeypatch):
    """warpedVolume=False: no full-size resampling in compute and no warped volume written; the
    progress still ends at 1; the "warped" overlay shows the moving volume through the transform;
    through the parameter node, an earlier run's warped volume is no longer referenced as an
    output (and is left as it was)."""
    import voxelopt.result

    nodes = phantom_nodes.add_phantom_volumes(scene)
    composite = scene.AddNewNodeByClass("vtkMRMLSliceCompositeNode")
    logic = RegistrationLogic(scene)
    node = logic.getParameterNode()
    parameters.set_node(node, "fixedVolume", nodes["fixed"])
    parameters.set_node(node, "movingVolume", nodes["moving"])
    logic.applyPreset(node, "fast")
    parameters.set_values(node, {"levels": 2, "featureSpacing": 2.0, "device": "cpu"})  # as fast_config
    first = logic.processParameterNode(node, showResult=False)
    kept = volumes.array_from_volume_node(first.warpedVolume).copy()
    assert node.GetNodeReference("outputVolume") is first.warpedVolume
    monkeypatch.setattr(voxelopt.result.RegistrationResult, "warp", lambda *a, **k: pytest.fail("warped the volume"))
    import voxelopt.stages

    label_warp = voxelopt.stages.warp_image
    monkeypatch.setattr(voxelopt.stages, "warp_image", lambda image, *a, nearest=False, **k: label_warp(
        image, *a, nearest=nearest, **k) if nearest else pytest.fail("warped the volume in the engine"))
    parameters.set_values(node, {"warpedVolume": False, "overlay": "warped", "alpha": 3.0})
    messages = []
    run = logic.processParameterNode(node, progress=lambda fraction, message: messages.append((fraction, message)))
    assert run.warpedVolume is None and node.GetNodeReference("outputVolume") is None
    assert run.warnings == [f"output warpedVolume '{first.warpedVolume.GetName()}' was not written by this run (no warped "
                            "volume was asked for): it still holds an earlier result"]
    assert messages[-1][0] == pytest.approx(1.0) and all(m != "warping the moving image" for _, m in messages)
    assert composite.GetForegroundVolumeID() == nodes["moving"].GetID()
    assert nodes["moving"].GetParentTransformNode() is run.transform
    np.testing.assert_array_equal(volumes.array_from_volume_node(first.warpedVolume), kept)  # left as it was
    assert "warpedVolume" not in {p.name for p in parameters.REGISTRATION_VALUES}  # not part of a user preset
    # ticked again: written into the node it had (no "..._1" beside it), unless the user renamed that node
    monkeypatch.undo()
    parameters.set_values(node, {"warpedVolume": True})
    again = logic.processParameterNode(node, showResult=False)
    assert again.warpedVolume is first.warpedVolume and again.createdNodeIDs == [] and again.warnings == []
    assert node.GetNodeReference("outputVolume") is first.warpedVolume
    parameters.set_values(node, {"warpedVolume": False})
    logic.processParameterNode(node, showResult=False)
    first.warpedVolume.SetName("kept for comparison")
    parameters.set_values(node, {"warpedVolume": True})
    renamed = logic.processParameterNode(node, showResult=False)
    assert renamed.warpedVolume is not first.warpedVolume and renamed.createdNodeIDs == [renamed.warpedVolume.GetID()]
    assert first.warpedVolume.GetName() == "kept for comparison"


def refused_before_reading(monkeypatch):
    """Make reading a volume's voxels (the first thing prepare computes) fail the test: a refused
    input must be refused before it."""
    monkeypatch.setattr(RegistrationLogic, "_volumeImage", lambda *args: pytest.fail("read the volumes"))


def test_a_logic_without_a_scene_outside_the_application_says_how_to_give_one(monkeypatch):
    monkeypatch.delattr(slicer, "mrmlScene", raising=False)  # slicer-core alone sets none
    with pytest.raises(VoxelOptSlicerError, match=r"no MRML scene: .*RegistrationLogic\(scene\) with scene = "
                                                 r"slicer.vtkMRMLScene\(\), or set slicer.mrmlScene"):
        RegistrationLogic().getParameterNode()
    own = slicer.vtkMRMLScene()
    monkeypatch.setattr(slicer, "mrmlScene", own, raising=False)
    assert RegistrationLogic().scene is own  # the application's scene, read at call time


def test_objects_of_the_wrong_kind_given_to_the_logic_are_clear_errors(scene, monkeypatch):
    """A batch script's mistakes (a name instead of a node, a model node where a volume or a
    transform belongs) are InputNodeErrors naming the role and the kind, not AttributeErrors."""
    nodes = phantom_nodes.add_phantom_volumes(scene, size=(12, 10, 8))
    model = scene.AddNewNodeByClass("vtkMRMLModelNode", "a model")
    grid = scene.AddNewNodeByClass("vtkMRMLGridTransformNode", "a grid transform")
    logic = RegistrationLogic(scene)
    refused_before_reading(monkeypatch)
    fixed, moving = nodes["fixed"], nodes["moving"]
    calls = [
        (lambda: logic.process("fixed", moving, fast_config()), "the fixed volume must be a vtkMRMLScalarVolumeNode, got str"),
        (lambda: logic.process(fixed, model, fast_config()),
         "the moving volume 'a model' must be a vtkMRMLScalarVolumeNode, got vtkMRMLModelNode"),
        (lambda: logic.process(fixed, moving, fast_config(), initialTransform=model),
         "the initial transform 'a model' must be a vtkMRMLTransformNode, got vtkMRMLModelNode"),
        (lambda: logic.process(fixed, moving, fast_config(), fixedMask=moving),
         "the fixed mask 'moving' must be a vtkMRMLSegmentationNode or vtkMRMLLabelMapVolumeNode, got vtkMRMLScalarVolumeNode"),
        (lambda: logic.process(fixed, moving, fast_config(), outputs=RegistrationOutputs(warpedVolume="out")),
         "the output warpedVolume must be a vtkMRMLNode, got str"),
        (lambda: logic.createCheckerboard(fixed, model), "the warped volume 'a model' must be a vtkMRMLScalarVolumeNode"),
        (lambda: logic.createDifference(None, moving), "the fixed volume must be a vtkMRMLScalarVolumeNode, got NoneType"),
        (lambda: logic.createInverseTransform(model), "the registration transform 'a model' must be a vtkMRMLTransformNode"),
        (lambda: logic.warpNodes(model, [moving], fixed), "the registration transform 'a model' must be a vtkMRMLTransformNode"),
        (lambda: logic.warpNodes(grid, ["moving", moving], fixed), "the node to warp must be a vtkMRMLNode, got str"),
    ]
    before = scene_snapshot(scene)
    for call, message in calls:
        with pytest.raises(InputNodeError) as refused:
            call()
        assert message in str(refused.value)
    assert scene_snapshot(scene) == before


@pytest.mark.parametrize("field, role", [("warpedVolume", "moving"), ("warpedVolume", "fixed"), ("entropyVolume", "fixed"),
                                         ("warpedSegmentation", "moving_segmentation"),
                                         ("warpedSegmentation", "fixed_segmentation"), ("warpedSegmentation", "mask")])
def test_an_output_node_that_is_an_input_is_refused(scene, monkeypatch, field, role):
    nodes = phantom_nodes.add_phantom_volumes(scene, size=(12, 10, 8), with_segmentations=True)
    nodes["mask"] = nodes["fixed_segmentation"]
    before = scene_snapshot(scene)
    refused_before_reading(monkeypatch)
    words = {"moving": "moving volume", "fixed": "fixed volume", "mask": "fixed mask"}.get(role, role.replace("_", " "))
    inputs = dict(fixedSegmentation=nodes["fixed_segmentation"], movingSegmentation=nodes["moving_segmentation"])
    if role == "mask":
        inputs = dict(fixedMask=nodes["mask"])
    with pytest.raises(InputNodeError, match=f"output {field} '{nodes[role].GetName()}' is also the {words}.*leave it empty"):
        RegistrationLogic(scene).process(nodes["fixed"], nodes["moving"], fast_config(),
                                         outputs=RegistrationOutputs(**{field: nodes[role]}), **inputs)
    assert scene_snapshot(scene) == before


def test_one_node_for_two_outputs_is_refused_also_through_the_parameter_node(scene, monkeypatch):
    nodes = phantom_nodes.add_phantom_volumes(scene, size=(12, 10, 8))
    logic = RegistrationLogic(scene)
    shared = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "map")
    before = scene_snapshot(scene)
    refused_before_reading(monkeypatch)
    with pytest.raises(InputNodeError, match="node 'map' is chosen for two outputs, entropyVolume and jacobianVolume"):
        logic.process(nodes["fixed"], nodes["moving"], fast_config(),
                      outputs=RegistrationOutputs(entropyVolume=shared, jacobianVolume=shared))
    node = logic.getParameterNode()
    for name, referenced in (("fixedVolume", nodes["fixed"]), ("movingVolume", nodes["moving"]), ("outputVolume", nodes["moving"])):
        parameters.set_node(node, name, referenced)
    before = scene_snapshot(scene)
    with pytest.raises(InputNodeError, match="output warpedVolume 'moving' is also the moving volume"):
        logic.processParameterNode(node)
    assert scene_snapshot(scene) == before


def test_a_label_map_as_fixed_or_moving_volume_is_refused(scene, monkeypatch):
    nodes = phantom_nodes.add_phantom_volumes(scene, size=(12, 10, 8))
    labels = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "labels")
    volumes.set_volume_array(labels, (volumes.array_from_volume_node(nodes["moving"]) > 0).astype(np.uint8),
                             *volumes.node_geometry_ras(nodes["moving"]))
    labels.CreateDefaultDisplayNodes()
    before = scene_snapshot(scene)
    refused_before_reading(monkeypatch)
    logic = RegistrationLogic(scene)
    with pytest.raises(InputNodeError, match="moving volume 'labels' is a label map volume.*moving segmentation.*or the moving mask"):
        logic.process(nodes["fixed"], labels, fast_config())
    with pytest.raises(InputNodeError, match="fixed volume 'labels' is a label map volume"):
        logic.process(labels, nodes["moving"], fast_config())
    assert scene_snapshot(scene) == before
    with pytest.raises(TypeError, match="not a vtkMRMLLabelMapVolumeNode"):  # nor can the GUI choose it
        parameters.set_node(logic.getParameterNode(), "movingVolume", labels)


def test_the_window_is_copied_only_between_display_nodes_that_have_one(scene):
    """The warped volume takes the moving volume's window; a label map's display node has none."""
    from VoxelOptRegistrationLib.logic import _copy_window

    nodes = phantom_nodes.add_phantom_volumes(scene, size=(12, 10, 8))
    labels = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "labels")
    volumes.set_volume_array(labels, np.zeros((8, 10, 12), np.uint8), *volumes.node_geometry_ras(nodes["fixed"]))
    labels.CreateDefaultDisplayNodes()
    target = nodes["fixed"].GetDisplayNode()
    window = (target.GetWindow(), target.GetLevel())
    _copy_window(labels, nodes["fixed"])
    _copy_window(nodes["moving"], labels)
    assert (target.GetWindow(), target.GetLevel()) == window
    nodes["moving"].GetDisplayNode().SetAutoWindowLevel(False)
    nodes["moving"].GetDisplayNode().SetWindowLevel(123.0, 45.0)
    _copy_window(nodes["moving"], nodes["fixed"])
    assert (target.GetWindow(), target.GetLevel()) == (123.0, 45.0)


def test_the_same_volume_as_fixed_and_moving_is_refused(scene, monkeypatch):
    nodes = phantom_nodes.add_phantom_volumes(scene, size=(12, 10, 8))
    before = scene_snapshot(scene)
    with monkeypatch.context() as patch:
        refused_before_reading(patch)
        with pytest.raises(InputNodeError, match="volume 'fixed' is both the fixed and the moving volume"):
            RegistrationLogic(scene).process(nodes["fixed"], nodes["fixed"], fast_config(levels=1))
    assert scene_snapshot(scene) == before  # the fixed volume is not under a transform: the next run works
    run = RegistrationLogic(scene).process(nodes["fixed"], nodes["moving"], fast_config(levels=1))
    assert nodes["moving"].GetParentTransformNode() is run.transform and nodes["fixed"].GetParentTransformNode() is None


def test_an_output_transform_under_a_transform_is_refused_and_left_there(scene, monkeypatch):
    nodes = phantom_nodes.add_phantom_volumes(scene, size=(12, 10, 8))
    logic = RegistrationLogic(scene)
    first = logic.process(nodes["fixed"], nodes["moving"], fast_config(levels=1))
    shift = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "shift")
    first.transform.SetAndObserveTransformNodeID(shift.GetID())
    before = scene_snapshot(scene)
    refused_before_reading(monkeypatch)
    outputs = RegistrationOutputs(first.transform, first.warpedVolume, first.entropyVolume, first.jacobianVolume)
    with pytest.raises(InputNodeError, match=f"output transform '{first.transform.GetName()}' is under transform 'shift'"):
        logic.process(nodes["fixed"], nodes["moving"], fast_config(levels=1, alpha=3.0), outputs=outputs)
    assert scene_snapshot(scene) == before and first.transform.GetParentTransformNode() is shift


def test_output_maps_under_a_transform_are_refused_and_left_there(scene, monkeypatch):
    """A warped volume, map or segmentation is written on the fixed grid: under a transform the
    views would show it moved away from it."""
    nodes = phantom_nodes.add_phantom_volumes(scene, size=(12, 10, 8))
    logic = RegistrationLogic(scene)
    first = logic.process(nodes["fixed"], nodes["moving"], fast_config(levels=1))
    shift = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "shift")
    refused_before_reading(monkeypatch)
    for field in ("warpedVolume", "entropyVolume", "jacobianVolume"):
        node = getattr(first, field)
        node.SetAndObserveTransformNodeID(shift.GetID())
        before = scene_snapshot(scene)
        with pytest.raises(InputNodeError, match=f"output {field} '{node.GetName()}' is under transform 'shift'.*"
                                                 "moved by it, away from the fixed volume"):
            logic.process(nodes["fixed"], nodes["moving"], fast_config(levels=1),
                          outputs=RegistrationOutputs(**{field: node}))
        assert scene_snapshot(scene) == before and node.GetParentTransformNode() is shift
        node.SetAndObserveTransformNodeID(None)


def test_volumes_of_several_values_per_voxel_are_refused_as_inputs_and_outputs(scene, monkeypatch):
    nodes = phantom_nodes.add_phantom_volumes(scene, size=(12, 10, 8))
    vector = scene.AddNewNodeByClass("vtkMRMLVectorVolumeNode", "colour")
    tensor = scene.AddNewNodeByClass("vtkMRMLDiffusionTensorVolumeNode", "tensors")
    before = scene_snapshot(scene)
    refused_before_reading(monkeypatch)
    logic = RegistrationLogic(scene)
    for node in (vector, tensor):
        for field in ("warpedVolume", "entropyVolume", "jacobianVolume"):
            with pytest.raises(InputNodeError, match=f"output {field} '{node.GetName()}' is a {node.GetClassName()}, "
                                                     "which holds several values per voxel"):
                logic.process(nodes["fixed"], nodes["moving"], fast_config(levels=1),
                              outputs=RegistrationOutputs(**{field: node}))
        with pytest.raises(InputNodeError, match=f"moving volume '{node.GetName()}' is a {node.GetClassName()}"):
            logic.process(nodes["fixed"], node, fast_config(levels=1))
    assert scene_snapshot(scene) == before
    for node in (vector, tensor):  # the parameter node, which the GUI's selectors fill, refuses them too
        with pytest.raises(TypeError, match="not a vtkMRMLLabelMapVolumeNode or vtkMRMLVectorVolumeNode"):
            parameters.set_node(logic.getParameterNode(), "outputVolume", node)


def test_arguments_of_the_wrong_kind_get_a_clear_message(scene, monkeypatch):
    """A batch script's slips (a dict for the outputs, text for a number, one node for a list)."""
    nodes = phantom_nodes.add_phantom_volumes(scene, size=(12, 10, 8))
    logic = RegistrationLogic(scene)
    before = scene_snapshot(scene)
    with monkeypatch.context() as patch:
        refused_before_reading(patch)
        with pytest.raises(InputNodeError, match="outputs must be a RegistrationOutputs .* got dict"):
            logic.process(nodes["fixed"], nodes["moving"], fast_config(levels=1), outputs={"transform": None})
        with pytest.raises(InputNodeError, match="overlayOpacity must be a number in \\[0, 1\\], got '0.5'"):
            logic.process(nodes["fixed"], nodes["moving"], fast_config(levels=1), overlayOpacity="0.5")
    assert scene_snapshot(scene) == before
    run = logic.process(nodes["fixed"], nodes["moving"], fast_config(levels=1))
    with pytest.raises(InputNodeError, match="nodes must be a list of the nodes to warp .* got vtkMRMLScalarVolumeNode"):
        logic.warpNodes(run.transform, nodes["moving"], nodes["fixed"])
    with pytest.raises(ValueError, match="square size must be a number of millimetres > 0, got '20'"):
        logic.createCheckerboard(nodes["fixed"], run.warpedVolume, "20")


def test_a_linear_output_transform_is_refused_as_by_the_parameter_node(scene, monkeypatch):
    nodes = phantom_nodes.add_phantom_volumes(scene, size=(12, 10, 8))
    linear = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "linear")
    before = scene_snapshot(scene)
    refused_before_reading(monkeypatch)
    logic = RegistrationLogic(scene)
    with pytest.raises(InputNodeError, match="output transform 'linear' is a vtkMRMLLinearTransformNode.*grid transform "
                                             "node.*or leave the output transform empty"):
        logic.process(nodes["fixed"], nodes["moving"], fast_config(), outputs=RegistrationOutputs(transform=linear))
    assert scene_snapshot(scene) == before
    with pytest.raises(TypeError, match="vtkMRMLGridTransformNode"):
        parameters.set_node(logic.getParameterNode(), "outputTransform", linear)


def test_overlapping_segments_are_reported_with_the_run(scene, monkeypatch):
    """A segment lying inside a later one (in another layer) has no voxel in the label maps: the run
    says so first in its warnings, leaves it out of the scores and the warped segmentation; a
    re-run reuses the exports and the overlaps found with them."""
    from slicer_test_helpers import add_segment

    from VoxelOptRegistrationLib import segmentations

    nodes = phantom_nodes.add_phantom_volumes(scene, with_segmentations=True)
    for role in ("fixed", "moving"):
        segmentation = nodes[f"{role}_segmentation"]
        liver = segmentation.GetSegmentation().GetSegmentIdBySegmentName("liver")
        labels = sitk.GetArrayFromImage(segmentations.export_labelmap(segmentation, [liver], nodes[role], "liver"))
        add_segment(scene, segmentation, labels > 0, nodes[role], "liver region")
        assert segmentation.GetSegmentation().GetNumberOfLayers() == 2
    logic = RegistrationLogic(scene)
    segs = (nodes["fixed_segmentation"], nodes["moving_segmentation"])
    run = logic.process(nodes["fixed"], nodes["moving"], fast_config(), *segs, showResult=False)
    assert len(run.warnings) == 3  # the overlaps, then what the Dice table leaves out
    assert run.warnings[2].startswith("the Dice table scores the segments present in both segmentations (matched by "
                                      "name), so it leaves out 1: 'liver' has no voxel in the fixed and moving segmentations")
    for role, text in zip(("moving", "fixed"), run.warnings):
        assert text.startswith(f"{role} segmentation '{role} segmentation': segment 'liver' overlaps 'liver region', "
                               "later in the moving segmentation's segment order, which therefore keeps the shared voxels: "
                               "'liver' has no voxel left in the label map, so it is not scored (no Dice)")
    assert "missing from the warped segmentation" in run.warnings[0]
    assert run.summary().startswith("Warning: moving segmentation")
    assert "liver" not in run.dice and "liver region" in run.dice
    warped = run.warpedSegmentation.GetSegmentation()
    assert warped.GetSegmentIdBySegmentName("liver") == "" and warped.GetSegmentIdBySegmentName("liver region") != ""
    monkeypatch.setattr(segmentations, "_export_labelmap", lambda *args: pytest.fail("exported again"))
    monkeypatch.setattr(segmentations, "segment_overlaps", lambda *args: pytest.fail("looked for overlaps again"))
    again = logic.process(nodes["fixed"], nodes["moving"], fast_config(alpha=3.0), *segs, showResult=False)
    assert again.warnings == run.warnings


def test_segmentations_without_overlap_give_no_warning_and_read_no_layer(scene, monkeypatch):
    from VoxelOptRegistrationLib import segmentations

    nodes = phantom_nodes.add_phantom_volumes(scene, with_segmentations=True)
    monkeypatch.setattr(segmentations, "_layers_on_one_grid", lambda *args: pytest.fail("read the layers"))
    run = RegistrationLogic(scene).process(nodes["fixed"], nodes["moving"], fast_config(),
                                           nodes["fixed_segmentation"], nodes["moving_segmentation"], showResult=False)
    assert run.warnings == [] and "liver" in run.dice


def test_segmentation_outputs_a_run_does_not_make_are_named_let_go_and_taken_up_again(scene):
    """A run without segmentations, into a parameter node whose earlier run made a warped
    segmentation and a Dice table: those nodes keep the earlier content, the run says so in its
    warnings, and the parameter node no longer references them as outputs, so the next run
    neither warns nor takes them for its own. With the segmentations given again, a run writes
    into those nodes (no "..._1" beside them)."""
    nodes = phantom_nodes.add_phantom_volumes(scene, size=(24, 20, 16), with_segmentations=True)
    logic = RegistrationLogic(scene)
    node = logic.getParameterNode()
    for name in ("fixedVolume", "movingVolume", "fixedSegmentation", "movingSegmentation"):
        parameters.set_node(node, name, nodes[{"fixedVolume": "fixed", "movingVolume": "moving", "fixedSegmentation":
                                               "fixed_segmentation", "movingSegmentation": "moving_segmentation"}[name]])
    logic.applyPreset(node, "fast")
    parameters.set_values(node, {"levels": 2, "featureSpacing": 2.0, "device": "cpu"})
    first = logic.processParameterNode(node, showResult=False)
    rows = first.diceTable.GetTable().GetNumberOfRows()
    assert first.warpedSegmentation is not None and rows > 0
    parameters.set_node(node, "movingSegmentation", None)
    second = logic.processParameterNode(node, showResult=False)
    assert second.warpedSegmentation is None and second.diceTable is None
    one_sided = "fixed labels were given without moving labels: nothing is scored"  # the engine's note
    assert [w.split(" (")[0] for w in second.warnings] == [
        one_sided, f"output warpedSegmentation '{first.warpedSegmentation.GetName()}' was not written by this run",
        f"output diceTable '{first.diceTable.GetName()}' was not written by this run"]
    assert node.GetNodeReference("outputSegmentation") is None and node.GetNodeReference("outputDiceTable") is None
    assert node.GetNodeReference("outputTransform") is second.transform is first.transform  # written again
    assert first.diceTable.GetScene() is scene and first.diceTable.GetTable().GetNumberOfRows() == rows  # left as it was
    assert [w.split(" (")[0] for w in logic.processParameterNode(node, showResult=False).warnings] == [one_sided]
    parameters.set_node(node, "movingSegmentation", nodes["moving_segmentation"])
    again = logic.processParameterNode(node, showResult=False)
    assert again.warpedSegmentation is first.warpedSegmentation and again.diceTable is first.diceTable
    assert again.createdNodeIDs == [] and node.GetNodeReference("outputDiceTable") is first.diceTable


def test_output_nodes_a_run_named_follow_the_inputs_and_a_users_name_is_kept(scene):
    """Fixed and moving swapped with the outputs reused: the nodes the module named after the
    moving volume are renamed after the new one (they no longer hold "moving warped"); a node the
    user renamed keeps the user's name; a failed run puts the names back."""
    nodes = phantom_nodes.add_phantom_volumes(scene, size=(24, 20, 16), with_segmentations=True)
    nodes["fixed"].SetName("A")
    nodes["moving"].SetName("B")
    logic = RegistrationLogic(scene)
    node = logic.getParameterNode()
    parameters.set_node(node, "fixedVolume", nodes["fixed"])
    parameters.set_node(node, "movingVolume", nodes["moving"])
    logic.applyPreset(node, "fast")
    parameters.set_values(node, {"levels": 2, "featureSpacing": 2.0, "device": "cpu"})
    first = logic.processParameterNode(node, showResult=False)
    assert (first.transform.GetName(), first.warpedVolume.GetName()) == ("B VoxelOpt transform", "B warped")
    first.entropyVolume.SetName("my entropy")
    parameters.set_node(node, "fixedVolume", nodes["moving"])
    parameters.set_node(node, "movingVolume", nodes["fixed"])
    second = logic.processParameterNode(node, showResult=False)
    assert second.transform is first.transform and second.warpedVolume is first.warpedVolume  # reused
    assert (second.transform.GetName(), second.warpedVolume.GetName(), second.jacobianVolume.GetName()) == (
        "A VoxelOpt transform", "A warped", "A Jacobian")
    assert second.entropyVolume.GetName() == "my entropy"
    # a run that fails while writing leaves the names as they were
    parameters.set_node(node, "fixedVolume", nodes["fixed"])
    parameters.set_node(node, "movingVolume", nodes["moving"])
    import VoxelOptRegistrationLib.logic as logic_module
    original = logic_module.RegistrationLogic._writeDiceTable

    def failing(self, *args):
        raise RuntimeError("disk gone")

    logic_module.RegistrationLogic._writeDiceTable = failing
    try:
        with pytest.raises(RuntimeError, match="disk gone"):
            logic.processParameterNode(node, showResult=False)
    finally:
        logic_module.RegistrationLogic._writeDiceTable = original
    assert (second.transform.GetName(), second.warpedVolume.GetName()) == ("A VoxelOpt transform", "A warped")
    third = logic.processParameterNode(node, showResult=False)
    assert (third.transform.GetName(), third.warpedVolume.GetName()) == ("B VoxelOpt transform", "B warped")
