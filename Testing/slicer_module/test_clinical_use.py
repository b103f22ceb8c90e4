"""The module in clinical use, on real slicer-core: repeated runs, views, saving, rollback, the worker
thread, the inverse transform, warping other nodes, presets and visual QA.

Small synthetic CT phantoms (see test_logic.py), "fast" preset with 2 levels.
"""

import os
import threading
import time

import numpy as np
import pytest
import SimpleITK as sitk

import slicer
from slicer_test_helpers import current_scene, requires_engine
from VoxelOptRegistrationLib import RegistrationLogic, RegistrationOutputs, colors, parameters, segmentations, phantom_nodes, transforms, volumes
from VoxelOptRegistrationLib.errors import InputNodeError, message_for_gui
from VoxelOptRegistrationLib.presets import PresetError, PresetStore
from VoxelOptRegistrationLib.worker import EngineWorker

pytestmark = requires_engine


def fast_config(**changes):
    import voxelopt

    return voxelopt.RegistrationConfig.preset("fast", **{"levels": 2, "feature_spacing": 2.0, "device": "cpu", **changes})


def outputs_of(run):
    return RegistrationOutputs(run.transform, run.warpedVolume, run.entropyVolume, run.jacobianVolume, run.warpedSegmentation, run.diceTable)


def labels_of(segmentation, reference):
    names = [segmentation.GetSegmentation().GetNthSegment(i).GetName() for i in range(segmentation.GetSegmentation().GetNumberOfSegments())]
    ids = [segmentation.GetSegmentation().GetSegmentIdBySegmentName(n) for n in sorted(names)]
    return sitk.GetArrayFromImage(segmentations.export_labelmap(segmentation, ids, reference, "check"))


@pytest.fixture(scope="module")
def registered():
    """One registration with segmentations (moving volume left under the transform), read-only users."""
    with current_scene() as scene:
        nodes = phantom_nodes.add_phantom_volumes(scene, with_segmentations=True)
        logic = RegistrationLogic(scene)
        run = logic.process(nodes["fixed"], nodes["moving"], fast_config(), nodes["fixed_segmentation"],
                            nodes["moving_segmentation"])
        yield {"scene": scene, "nodes": nodes, "logic": logic, "run": run}


def test_apply_twice_with_segmentations_gives_identical_dice(scene):
    nodes = phantom_nodes.add_phantom_volumes(scene, with_segmentations=True)
    logic = RegistrationLogic(scene)
    segs = (nodes["fixed_segmentation"], nodes["moving_segmentation"])
    first = logic.process(nodes["fixed"], nodes["moving"], fast_config(), *segs)
    assert nodes["moving"].GetParentTransformNode() is first.transform  # the live warp that broke the second run
    first_labels = labels_of(first.warpedSegmentation, nodes["fixed"]).copy()
    second = logic.process(nodes["fixed"], nodes["moving"], fast_config(), *segs, outputs=outputs_of(first))
    assert second.dice == pytest.approx(first.dice, abs=1e-12)
    assert second.metrics["dice_mean"] > 0.6
    np.testing.assert_array_equal(labels_of(second.warpedSegmentation, nodes["fixed"]), first_labels)


def test_different_moving_volume_with_a_reused_transform(scene):
    nodes = phantom_nodes.add_phantom_volumes(scene)
    logic = RegistrationLogic(scene)
    first = logic.process(nodes["fixed"], nodes["moving"], fast_config())
    other = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "moving 2")
    volumes.set_volume_array(other, volumes.array_from_volume_node(nodes["moving"]) + 5.0, *volumes.node_geometry_ras(nodes["moving"]))
    second = logic.process(nodes["fixed"], other, fast_config(), outputs=outputs_of(first))
    assert second.transform is first.transform
    assert nodes["moving"].GetParentTransformNode() is None  # no longer shows a field that is not its own
    assert other.GetParentTransformNode() is second.transform
    assert second.transform.GetNodeReference(second.transform.GetMovingNodeReferenceRole()) is other


def add_slice_views(scene):
    """Three slice views (slice + composite nodes), as desktop Slicer's layout has."""
    out = []
    for name in ("Red", "Yellow", "Green"):
        slice_node = scene.AddNewNodeByClass("vtkMRMLSliceNode")
        slice_node.SetLayoutName(name)
        composite = scene.AddNewNodeByClass("vtkMRMLSliceCompositeNode")
        composite.SetLayoutName(name)
        out.append((slice_node, composite))
    return out


def view_state(slice_node):
    matrix = slice_node.GetSliceToRAS()
    return (tuple(slice_node.GetFieldOfView()), tuple(slice_node.GetXYZOrigin()),
            tuple(matrix.GetElement(r, c) for r in range(4) for c in range(4)))


def test_parameter_change_leaves_every_slice_view_as_the_user_set_it(scene):
    nodes = phantom_nodes.add_phantom_volumes(scene)
    views = add_slice_views(scene)
    logic = RegistrationLogic(scene)
    node = logic.getParameterNode()
    parameters.set_values(node, parameters.values_from_config_dict(fast_config().to_dict()))
    parameters.set_node(node, "fixedVolume", nodes["fixed"])
    parameters.set_node(node, "movingVolume", nodes["moving"])
    default_fov = views[0][0].GetFieldOfView()[0]
    logic.processParameterNode(node)
    for slice_node, composite in views:  # the first run shows the fixed volume, fitted
        assert composite.GetBackgroundVolumeID() == nodes["fixed"].GetID()
        assert slice_node.GetFieldOfView()[0] != pytest.approx(default_fov)
    # The user zooms, pans, pages and shows the moving volume in one view.
    for i, (slice_node, _) in enumerate(views):
        slice_node.SetFieldOfView(61.0 + i, 61.0 + i, 1.0)
        slice_node.SetXYZOrigin(4.0, -3.0 + i, 0.0)
        slice_node.SetSliceOffset(7.5 + i)
    views[2][1].SetBackgroundVolumeID(nodes["moving"].GetID())
    before = [view_state(s) for s, _ in views]
    # A display parameter changes: what the widget does on every parameter-node modification.
    parameters.set_values(node, {"overlay": "jacobian", "overlayOpacity": 0.3})
    logic.showOverlay(node)
    assert [view_state(s) for s, _ in views] == before
    assert views[2][1].GetBackgroundVolumeID() == nodes["moving"].GetID()
    for _, composite in views:
        assert composite.GetForegroundVolumeID() == parameters.get_node(node, "outputJacobian").GetID()
        assert composite.GetForegroundOpacity() == pytest.approx(0.3)
    # An automatic re-run keeps the zoom of the views that already showed the fixed volume.
    parameters.set_value(node, "alpha", 2.0)
    logic.processParameterNode(node)
    assert [view_state(s) for s, _ in views[:2]] == before[:2]


def test_inverse_transform_maps_fixed_to_moving_to_fixed(registered):
    run, fixed = registered["run"], registered["nodes"]["fixed"]
    inverse = registered["logic"].createInverseTransform(run.transform)
    origin, spacing, direction = volumes.node_geometry_ras(fixed)
    size = np.array(fixed.GetImageData().GetDimensions())
    rng = np.random.default_rng(0)
    points = [origin + direction @ (spacing * rng.uniform(0.2, 0.8) * (size - 1) * rng.uniform(0.5, 1.0, 3)) for _ in range(20)]
    to_moving, to_fixed = inverse.GetTransformToParent(), inverse.GetTransformFromParent()
    forward = run.transform.GetTransformFromParent()
    worst = moved = 0.0
    for p in points:
        q = np.array(to_moving.TransformPoint(p))
        np.testing.assert_allclose(q, forward.TransformPoint(p), atol=1e-9)  # an exact copy of the field
        moved = max(moved, np.linalg.norm(q - p))
        worst = max(worst, np.linalg.norm(np.array(to_fixed.TransformPoint(q)) - p))
    assert moved > 1.0  # the field really moves these points
    assert worst < 0.5
    assert inverse.GetNodeReference(inverse.GetMovingNodeReferenceRole()) is fixed


def test_warp_other_nodes_into_the_fixed_space(registered):
    scene, run, nodes, logic = registered["scene"], registered["run"], registered["nodes"], registered["logic"]
    fixed, moving_seg = nodes["fixed"], nodes["moving_segmentation"]
    # A markup at the moving-space point of a fixed point p lands on p.
    p = np.array(volumes.node_geometry_ras(fixed)[0]) + volumes.node_geometry_ras(fixed)[2] @ (np.array(fixed.GetSpacing()) * 20)
    q = np.array(run.transform.GetTransformFromParent().TransformPoint(p))
    markup = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "landmark")
    markup.AddControlPoint(*q)
    copy = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "other moving volume")  # e.g. a second phase
    volumes.set_volume_array(copy, volumes.array_from_volume_node(nodes["moving"]), *volumes.node_geometry_ras(nodes["moving"]))
    warped_markup, warped_seg, warped_volume = logic.warpNodes(run.transform, [markup, moving_seg, copy], fixed)
    assert np.linalg.norm(np.array(warped_markup.GetNthControlPointPosition(0)) - p) < 0.5
    np.testing.assert_allclose(markup.GetNthControlPointPosition(0), q)  # the original is untouched
    assert moving_seg.GetParentTransformNode() is None and warped_markup.GetDisplayNode() is not markup.GetDisplayNode()
    # The hardened segmentation agrees with the engine's warped labels.
    for name in ("liver", "right kidney"):
        ids = [warped_seg.GetSegmentation().GetSegmentIdBySegmentName(name)]
        mask = sitk.GetArrayFromImage(segmentations.export_labelmap(warped_seg, ids, fixed, "check")) > 0
        ids_fixed = [nodes["fixed_segmentation"].GetSegmentation().GetSegmentIdBySegmentName(name)]
        ref = sitk.GetArrayFromImage(segmentations.export_labelmap(nodes["fixed_segmentation"], ids_fixed, fixed, "check")) > 0
        dice = 2 * (mask & ref).sum() / (mask.sum() + ref.sum())
        assert dice == pytest.approx(run.dice[name], abs=0.05)
    engine = volumes.array_from_volume_node(run.warpedVolume)
    resampled = volumes.array_from_volume_node(warped_volume)
    inside = resampled != 0
    assert inside.mean() > 0.5 and np.abs(resampled - engine)[inside].max() < 1e-2 * np.ptp(engine)
    with pytest.raises(InputNodeError, match="VoxelOpt warps"):
        logic.warpNodes(run.transform, [run.diceTable], fixed)


def test_warped_copies_are_in_the_fixed_space_and_keep_overlapping_segments(registered, monkeypatch):
    """The moving volume sits under the run's transform; its warped copy is on the fixed grid
    already and must not stay under it (the views would warp it twice). Overlapping segments stay
    whole; a call that fails leaves no copy behind."""
    from slicer_test_helpers import add_segment
    from VoxelOptRegistrationLib import warping

    scene, run, nodes, logic = registered["scene"], registered["run"], registered["nodes"], registered["logic"]
    fixed, moving = nodes["fixed"], nodes["moving"]
    assert moving.GetParentTransformNode() is run.transform
    (copy,) = logic.warpNodes(run.transform, [moving], fixed)
    assert copy.GetParentTransformNode() is None
    engine = volumes.array_from_volume_node(run.warpedVolume)
    assert np.abs(volumes.array_from_volume_node(copy) - engine).max() < 1e-2 * np.ptp(engine)

    voxels = volumes.array_from_volume_node(moving)
    body = (voxels > -500).astype(np.uint8)
    organ = np.zeros_like(body)
    k, j, i = (n // 2 for n in body.shape)
    organ[k - 3:k + 3, j - 4:j + 4, i - 4:i + 4] = 1
    assert body[organ > 0].all()
    overlapping = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "overlapping")
    overlapping.CreateDefaultDisplayNodes()
    add_segment(scene, overlapping, organ, moving, "organ")
    add_segment(scene, overlapping, body, moving, "body")  # the later segment, over all of "organ"
    assert overlapping.GetSegmentation().GetNumberOfLayers() == 2
    (warped,) = logic.warpNodes(run.transform, [overlapping], fixed)
    assert segmentations.segment_names(warped) == ["organ", "body"]
    masks = {}
    for name in ("organ", "body"):
        ids = [warped.GetSegmentation().GetSegmentIdBySegmentName(name)]
        masks[name] = sitk.GetArrayFromImage(segmentations.export_labelmap(warped, ids, fixed, "check")) > 0
    assert masks["organ"].sum() > 50 and masks["body"][masks["organ"]].all()  # both nearest through one field

    empty = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "empty")
    count = scene.GetNumberOfNodes()
    with pytest.raises(InputNodeError, match="segmentation 'empty' has no segments"):
        logic.warpNodes(run.transform, [moving, empty], fixed)  # refused before any copy
    monkeypatch.setattr(warping, "_warped_labels", lambda *args: (_ for _ in ()).throw(RuntimeError("disk full")))
    with pytest.raises(RuntimeError, match="disk full"):
        logic.warpNodes(run.transform, [moving, overlapping], fixed)  # the volume's copy is made first
    assert scene.GetNumberOfNodes() == count
    for node in (copy, warped, overlapping, empty):
        logic.removeNodes([node])


def test_saved_and_reloaded_scene_keeps_linear_interpolation(registered, tmp_path):
    scene, run = registered["scene"], registered["run"]
    point = np.array(volumes.node_geometry_ras(registered["nodes"]["fixed"])[0]) + 30.0
    expected = run.transform.GetTransformFromParent().TransformPoint(point)
    storage = run.transform.GetStorageNode() or (run.transform.AddDefaultStorageNode() and run.transform.GetStorageNode())
    storage.SetFileName(str(tmp_path / "transform.h5"))
    assert storage.WriteData(run.transform)
    scene.SetURL(str(tmp_path / "scene.mrml"))
    assert scene.Commit()
    loaded = slicer.vtkMRMLScene()
    colors.register_legend_class(loaded)  # desktop Slicer's Colors module does this for its scene
    transforms.observe_scene_loading(loaded)
    loaded.SetURL(str(tmp_path / "scene.mrml"))
    assert loaded.Import()
    legends = [loaded.GetNodeByID(n.GetID()) for n in (run.entropyVolume, run.jacobianVolume)]
    assert [colors.color_legend(node, role)[1] for node, role in zip(legends, ("entropy", "jacobian"))] == [False, False]
    node = loaded.GetNodeByID(run.transform.GetID())
    grid = node.GetTransformFromParent()
    assert isinstance(grid, slicer.vtkOrientedGridTransform)
    assert grid.GetInterpolationModeAsString() == "Linear"
    np.testing.assert_allclose(grid.TransformPoint(point), expected, atol=1e-4)
    loaded.Clear(1)


def test_a_successful_rerun_releases_the_replaced_segmentation(scene):
    """A re-run gives the warped segmentation node a new segmentation object; once the run has
    succeeded the old one's segments drop their representations, so that Slicer does not copy the
    shared labelmap layer once per segment while removing them (1.5 s for 122 segments)."""
    nodes = phantom_nodes.add_phantom_volumes(scene, with_segmentations=True)
    logic = RegistrationLogic(scene)
    segs = (nodes["fixed_segmentation"], nodes["moving_segmentation"])
    first = logic.process(nodes["fixed"], nodes["moving"], fast_config(), *segs)
    assert run_created(first, scene)
    old = first.warpedSegmentation.GetSegmentation()
    old_segments = [old.GetNthSegment(i) for i in range(old.GetNumberOfSegments())]
    labelmap = slicer.vtkSegmentationConverter.GetBinaryLabelmapRepresentationName()
    assert old_segments and all(s.GetRepresentation(labelmap) is not None for s in old_segments)
    second = logic.process(nodes["fixed"], nodes["moving"], fast_config(alpha=3.0), *segs, outputs=outputs_of(first))
    assert second.warpedSegmentation is first.warpedSegmentation and second.createdNodeIDs == []
    assert second.warpedSegmentation.GetSegmentation() is not old
    assert all(s.GetRepresentation(labelmap) is None for s in old_segments)  # released
    assert np.count_nonzero(labels_of(second.warpedSegmentation, nodes["fixed"])) > 1000  # the new ones intact


def run_created(run, scene):
    """The run listed the nodes it made, and they are in the scene."""
    return bool(run.createdNodeIDs) and all(scene.GetNodeByID(i) is not None for i in run.createdNodeIDs)


def test_rollback_restores_overwritten_nodes_when_a_later_write_fails(scene, monkeypatch):
    nodes = phantom_nodes.add_phantom_volumes(scene, with_segmentations=True)
    logic = RegistrationLogic(scene)
    segs = (nodes["fixed_segmentation"], nodes["moving_segmentation"])
    run = logic.process(nodes["fixed"], nodes["moving"], fast_config(), *segs)
    for node in (run.entropyVolume, run.jacobianVolume):  # output nodes without a colour legend (the user's own)
        scene.RemoveNode(colors.color_legend(node, "entropy")[0])
    node_ids = sorted(scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes()))
    warped = volumes.array_from_volume_node(run.warpedVolume).copy()
    field = transforms.displacement_ras_from_transform_node(run.transform).copy()
    window = run.entropyVolume.GetDisplayNode().GetWindowLevelMax()
    segments = labels_of(run.warpedSegmentation, nodes["fixed"]).copy()

    def failing_write(*args, **kwargs):
        raise RuntimeError("disk full")  # the last write of a run (the Dice table) fails

    monkeypatch.setattr(segmentations, "update_dice_table", failing_write)
    with pytest.raises(RuntimeError, match="disk full"):
        logic.process(nodes["fixed"], nodes["moving"], fast_config(alpha=3.0, thetas=(20.0, 2.0)), *segs, outputs=outputs_of(run))
    assert sorted(scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes())) == node_ids  # legends too
    assert [n.GetNumberOfDisplayNodes() for n in (run.entropyVolume, run.jacobianVolume)] == [1, 1]
    np.testing.assert_array_equal(volumes.array_from_volume_node(run.warpedVolume), warped)
    np.testing.assert_array_equal(transforms.displacement_ras_from_transform_node(run.transform), field)
    assert run.entropyVolume.GetDisplayNode().GetWindowLevelMax() == window
    np.testing.assert_array_equal(labels_of(run.warpedSegmentation, nodes["fixed"]), segments)
    assert nodes["moving"].GetParentTransformNode() is run.transform
    # and without existing outputs, a failing write leaves no new node
    monkeypatch.undo()
    monkeypatch.setattr(segmentations, "update_dice_table", failing_write)
    with pytest.raises(RuntimeError):
        logic.process(nodes["fixed"], nodes["moving"], fast_config(), *segs)
    assert sorted(scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes())) == node_ids


def _mrml_free(value, depth=0):
    """True when ``value`` holds no VTK/MRML object (recursing into containers and dataclasses)."""
    import vtk

    if isinstance(value, vtk.vtkObjectBase):
        return False
    if depth > 3:
        return True
    if isinstance(value, dict):
        return all(_mrml_free(v, depth + 1) for v in value.values())
    if isinstance(value, (list, tuple)):
        return all(_mrml_free(v, depth + 1) for v in value)
    if hasattr(value, "__dataclass_fields__"):
        return all(_mrml_free(getattr(value, f), depth + 1) for f in value.__dataclass_fields__)
    return True


def test_engine_on_a_worker_thread_then_results_written_on_the_main_thread(scene):
    import voxelopt

    nodes = phantom_nodes.add_phantom_volumes(scene, with_segmentations=True)
    logic = RegistrationLogic(scene)
    request = logic.prepare(nodes["fixed"], nodes["moving"], fast_config(), nodes["fixed_segmentation"], nodes["moving_segmentation"])
    assert _mrml_free(request.engineInputs)  # what crosses to the thread holds no MRML object
    count = scene.GetNumberOfNodes()
    threads, seen = [], []

    def compute(progress, cancel):
        threads.append(threading.current_thread())
        return logic.compute(request.engineInputs, progress, cancel)

    worker = EngineWorker(compute).start()
    while not worker.done:  # the main thread stays free: it polls, as the widget's QTimer does
        seen.append(worker.progress)
        time.sleep(0.02)
    assert worker.error is None and threads[0] is not threading.main_thread()
    assert scene.GetNumberOfNodes() == count  # the thread wrote nothing
    assert len({message for _, message in seen}) >= 3  # progress through the stages
    run = logic.apply(request, worker.result)
    reference = logic.process(nodes["fixed"], nodes["moving"], fast_config(), nodes["fixed_segmentation"], nodes["moving_segmentation"],
                              outputs=outputs_of(run))
    assert run.dice == pytest.approx(reference.dice, abs=1e-12)

    # Cancel acts within a second and leaves the scene unchanged (a new logic: no cached features).
    count = scene.GetNumberOfNodes()
    fresh = RegistrationLogic(scene)
    worker = EngineWorker(lambda progress, cancel: fresh.compute(request.engineInputs, progress, cancel)).start()
    while worker.progress[0] == 0.0 and not worker.done:
        time.sleep(0.01)
    asked = time.perf_counter()
    worker.cancel()
    assert worker.wait(timeout=10)
    assert isinstance(worker.error, voxelopt.RegistrationCancelled)
    assert time.perf_counter() - asked < 5.0  # promptly (about 0.1 s on an idle machine; a busy CI machine is slower)
    assert scene.GetNumberOfNodes() == count


def test_no_overlap_message_names_the_gui_setting(scene):
    import voxelopt

    nodes = phantom_nodes.add_phantom_volumes(scene)
    moving = nodes["moving"]
    moving.SetOrigin(*(np.array(moving.GetOrigin()) + 2000.0))
    with pytest.raises(voxelopt.InputError) as info:
        RegistrationLogic(scene).process(nodes["fixed"], moving, fast_config(init="none"))
    text = message_for_gui(info.value)
    assert "init=" not in text and "'Initial alignment' (Advanced) to centers or com" in text


def test_a_too_small_moving_volume_message_says_to_swap_the_volumes():
    import voxelopt

    text = message_for_gui(voxelopt.InputError(
        "the fixed and moving images do not overlap after the 'com' initial alignment (1.0% of the fixed image lies "
        "inside the moving one, need 5%); the moving image's box is only 2.0% of the fixed image's: register the "
        "other way round (the smaller scan as the fixed image), or crop the fixed image to the region the moving one covers"))
    assert "swap the fixed and moving volumes" in text and "crop the fixed volume" in text
    assert "register the other way round" not in text


def test_a_too_thin_fixed_volume_message_names_the_gui_settings(scene):
    import voxelopt

    nodes = phantom_nodes.add_phantom_volumes(scene, size=(40, 34, 2))  # 16 mm thick: 1 voxel of 20 mm
    with pytest.raises(voxelopt.InputError) as info:
        RegistrationLogic(scene).process(nodes["fixed"], nodes["moving"], fast_config(feature_spacing=10.0))
    text = message_for_gui(info.value)
    assert "too small" in text and "a smaller 'Feature spacing' or a larger 'Working scale' (Advanced)" in text


def test_last_run_is_forgotten_when_the_scene_is_closed(registered):
    logic = RegistrationLogic(registered["scene"])
    logic._lastRun = registered["run"]
    assert logic.lastRun is registered["run"]
    other = slicer.vtkMRMLScene()
    logic._scene = other  # the scene was closed and a new one opened
    assert logic.lastRun is None


def test_user_presets_are_saved_and_loaded(scene, tmp_path):
    logic = RegistrationLogic(scene)
    logic.presetStore = PresetStore(str(tmp_path / "presets"))
    node = logic.getParameterNode()
    parameters.set_values(node, {"alpha": 2.25, "levels": 3, "thetas": "40, 4", "adaptive": False, "overlay": "jacobian"})
    path = logic.saveUserPreset(node, "liver follow-up")
    assert os.path.dirname(path) == str(tmp_path / "presets") and logic.presetStore.names() == ["liver follow-up"]
    parameters.set_values(node, {"alpha": 1.0, "levels": 5, "thetas": "1", "adaptive": True, "overlay": "entropy"})
    logic.loadUserPreset(node, "liver follow-up")
    values = parameters.get_values(node)
    assert (values["alpha"], values["levels"], values["thetas"], values["adaptive"]) == (2.25, 3, "40, 4", False)
    assert values["overlay"] == "entropy"  # display settings are not part of a preset
    with pytest.raises(PresetError, match="built-in"):
        logic.saveUserPreset(node, "paper")
    with pytest.raises(PresetError, match="no user preset"):
        logic.loadUserPreset(node, "missing")
    # a preset saved before a parameter existed: that parameter takes its default, not the node's value
    (tmp_path / "presets" / "older.json").write_text('{"values": {"alpha": 2.0}}')
    parameters.set_values(node, {"kFinest": 2, "levels": 6})
    logic.loadUserPreset(node, "older")
    values = parameters.get_values(node)
    assert (values["alpha"], values["kFinest"], values["levels"]) == (2.0, 0, parameters.VALUE_BY_NAME["levels"].default)
    (tmp_path / "presets" / "broken.json").write_text('{"values": {"alpha": "a lot"}}')
    with pytest.raises(PresetError, match="alpha"):
        logic.loadUserPreset(node, "broken")


def test_checkerboard_and_difference_for_visual_qa(registered):
    run, fixed, logic = registered["run"], registered["nodes"]["fixed"], registered["logic"]
    board = logic.createCheckerboard(fixed, run.warpedVolume, squareMm=10.0)
    difference = logic.createDifference(fixed, run.warpedVolume)
    f, w = volumes.array_from_volume_node(fixed), volumes.array_from_volume_node(run.warpedVolume)
    b, d = volumes.array_from_volume_node(board), volumes.array_from_volume_node(difference)
    from_fixed, from_warped = np.isclose(b, f), np.isclose(b, w)
    assert np.all(from_fixed | from_warped)
    assert 0.3 < (from_fixed & ~from_warped).sum() / (~(from_fixed & from_warped)).sum() < 0.7  # both halves
    np.testing.assert_allclose(d, w.astype(np.float32) - f.astype(np.float32), atol=1e-3)
    assert volumes.same_geometry(board, fixed) and volumes.same_geometry(difference, fixed)
    display = run.warpedSegmentation.GetDisplayNode()
    assert display.GetVisibility2DOutline() and not display.GetVisibility2DFill()  # outlines over the fixed CT
