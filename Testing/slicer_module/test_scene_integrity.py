"""What a run and "Warp into fixed space" do to the rest of the scene, on real slicer-core: the
warped copies' storage nodes and outside value, output nodes outside the scene, input nodes
under VoxelOpt's own transforms, the segments the Dice table leaves out, closed-surface
segmentations, the auto-update key across a run and removing a run's nodes.

Small synthetic CT phantoms (see test_logic.py), "fast" preset with 2 levels.
"""

import numpy as np
import pytest
import SimpleITK as sitk
import vtk
from vtkmodules.util import numpy_support

import slicer
from slicer_test_helpers import add_segment, current_scene, requires_engine
from VoxelOptRegistrationLib import RegistrationLogic, RegistrationOutputs, parameters, phantom_nodes, segmentations, volumes
from VoxelOptRegistrationLib.errors import InputNodeError
from VoxelOptRegistrationLib.transaction import SceneTransaction

pytestmark = requires_engine

#: The moving volume on a grid of its own, so that part of the fixed grid maps outside it.
MOVING_GEOMETRY = ((36, 40, 22), (10.0, 8.0, 9.0), 35.0)
LABELMAP = slicer.vtkSegmentationConverter.GetBinaryLabelmapRepresentationName()
SURFACE = slicer.vtkSegmentationConverter.GetClosedSurfaceRepresentationName()


def fast_config(**changes):
    import voxelopt

    return voxelopt.RegistrationConfig.preset("fast", **{"levels": 2, "feature_spacing": 5.0, "device": "cpu", **changes})


def node_ids(scene):
    return sorted(scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes()))


def array(node):
    return volumes.array_from_volume_node(node).astype(np.float64)


def volume_copy(scene, node, name, class_name="vtkMRMLScalarVolumeNode", values=None):
    """A new volume on ``node``'s grid (its voxels, or ``values``), with display nodes."""
    copy = scene.AddNewNodeByClass(class_name, name)
    volumes.set_volume_array(copy, volumes.array_from_volume_node(node) if values is None else values,
                             *volumes.node_geometry_ras(node))
    copy.CreateDefaultDisplayNodes()
    return copy


@pytest.fixture(scope="module")
def registered():
    """One registration with segmentations (the moving volume left under the transform)."""
    with current_scene() as scene:
        nodes = phantom_nodes.add_phantom_volumes(scene, with_segmentations=True, moving_geometry=MOVING_GEOMETRY)
        logic = RegistrationLogic(scene)
        run = logic.process(nodes["fixed"], nodes["moving"], fast_config(), nodes["fixed_segmentation"],
                            nodes["moving_segmentation"])
        yield {"scene": scene, "nodes": nodes, "logic": logic, "run": run}


# ---------------------------------------------------------------------- warping other nodes
def test_warped_copies_never_write_into_the_originals_files(registered, tmp_path):
    """A warped copy has no storage node of the original (Copy() shared it): saving the scene,
    which writes every node through its storage node, leaves the original's file as it was."""
    scene, run, nodes, logic = registered["scene"], registered["run"], registered["nodes"], registered["logic"]
    centre = volumes.node_geometry_ras(nodes["moving"])[0] + 60.0
    sphere = vtk.vtkSphereSource()
    sphere.SetCenter(*centre)
    sphere.SetRadius(20.0)
    sphere.Update()
    model = scene.AddNewNodeByClass("vtkMRMLModelNode", "ball")
    model.SetAndObservePolyData(sphere.GetOutput())
    markup = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "landmark")
    markup.AddControlPoint(*centre)
    volume = volume_copy(scene, nodes["moving"], "second series")
    originals = [model, markup, volume, nodes["moving_segmentation"]]
    for node, storage_class, file_name in zip(originals, ("vtkMRMLModelStorageNode", "vtkMRMLMarkupsFiducialStorageNode",
                                                          "vtkMRMLVolumeArchetypeStorageNode", "vtkMRMLSegmentationStorageNode"),
                                              ("ball.vtk", "landmark.mrk.json", "series.nrrd", "segments.seg.nrrd")):
        storage = scene.AddNewNodeByClass(storage_class)
        storage.SetFileName(str(tmp_path / file_name))
        node.SetAndObserveStorageNodeID(storage.GetID())
    points = numpy_support.vtk_to_numpy(model.GetPolyData().GetPoints().GetData()).copy()
    try:
        copies = logic.warpNodes(run.transform, originals, nodes["fixed"])
        for original, copy in zip(originals, copies):
            assert copy.GetNumberOfStorageNodes() == 0, copy.GetName()
            assert original.GetStorageNode() is not None
        for node in originals + copies:  # "Save": every node with a storage node writes through it
            if node.GetStorageNode() is not None:
                assert node.GetStorageNode().WriteData(node)
        reader = slicer.vtkMRMLModelStorageNode()
        reloaded = slicer.vtkMRMLModelNode()
        reader.SetFileName(str(tmp_path / "ball.vtk"))
        assert reader.ReadData(reloaded)
        np.testing.assert_allclose(numpy_support.vtk_to_numpy(reloaded.GetPolyData().GetPoints().GetData()), points, atol=1e-4)
    finally:
        nodes["moving_segmentation"].SetAndObserveStorageNodeID(None)


def test_warped_volumes_are_filled_like_the_runs_warped_volume(registered):
    """Outside the moving volume, a warped copy takes the moving volume's minimum (air), as the
    engine's warped volume does (Slicer's resampling would fill 0 HU); label maps take 0. The
    moving volume itself, under the result transform after Apply, is warped as stored."""
    scene, run, nodes, logic = registered["scene"], registered["run"], registered["nodes"], registered["logic"]
    moving = nodes["moving"]
    assert moving.GetParentTransformNode() is run.transform
    labels = volume_copy(scene, moving, "body", "vtkMRMLLabelMapVolumeNode",
                         (volumes.array_from_volume_node(moving) > -500).astype(np.uint8) * 3)
    warped, warped_labels = logic.warpNodes(run.transform, [moving, labels], nodes["fixed"])
    assert moving.GetParentTransformNode() is run.transform  # left as it was
    engine = array(run.warpedVolume)
    minimum = array(moving).min()
    outside = engine == minimum
    assert 100 < outside.sum() < 0.5 * outside.size  # part of the fixed grid maps outside the moving volume
    assert np.all(array(warped)[outside] == minimum)
    assert np.abs(array(warped) - engine).max() < 1e-4 * np.ptp(engine)
    assert warped_labels.IsA("vtkMRMLLabelMapVolumeNode")
    assert set(np.unique(array(warped_labels))) == {0.0, 3.0} and np.all(array(warped_labels)[outside] == 0)


def test_a_segmentation_under_the_result_transform_is_warped_as_stored(registered):
    run, nodes, logic = registered["run"], registered["nodes"], registered["logic"]
    segmentation, fixed = nodes["moving_segmentation"], nodes["fixed"]
    (plain,) = logic.warpNodes(run.transform, [segmentation], fixed)
    segmentation.SetAndObserveTransformNodeID(run.transform.GetID())  # shown warped live
    try:
        (shown,) = logic.warpNodes(run.transform, [segmentation], fixed)
        assert segmentation.GetParentTransformNode() is run.transform
    finally:
        segmentation.SetAndObserveTransformNodeID(None)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(segmentations.segment_labels(shown)[0]),
                                  sitk.GetArrayFromImage(segmentations.segment_labels(plain)[0]))


# ---------------------------------------------------------------------- output nodes outside the scene
def test_output_nodes_not_in_the_scene_are_refused(scene):
    nodes = phantom_nodes.add_phantom_volumes(scene, size=(12, 10, 8))
    logic = RegistrationLogic(scene)
    removed = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "old warped")
    scene.RemoveNode(removed)
    other_scene = slicer.vtkMRMLScene()
    foreign = other_scene.AddNewNodeByClass("vtkMRMLGridTransformNode", "other scene's transform")
    before = node_ids(scene)
    with pytest.raises(InputNodeError, match="output warpedVolume 'old warped' is not in the scene.*leave it empty"):
        logic.prepare(nodes["fixed"], nodes["moving"], fast_config(), outputs=RegistrationOutputs(warpedVolume=removed))
    with pytest.raises(InputNodeError, match="output transform 'other scene's transform' is not in the scene"):
        logic.process(nodes["fixed"], nodes["moving"], fast_config(), outputs=RegistrationOutputs(transform=foreign))
    assert node_ids(scene) == before and nodes["moving"].GetParentTransformNode() is None
    other_scene.Clear(1)


def test_outputs_deleted_during_the_run_get_new_nodes(scene):
    """The user deletes the output transform and warped volume while the engine runs (the GUI's
    worker thread): the results go into new nodes, the run says so, and the moving volume is
    under the new transform, which is in the scene."""
    nodes = phantom_nodes.add_phantom_volumes(scene)
    logic = RegistrationLogic(scene)
    first = logic.process(nodes["fixed"], nodes["moving"], fast_config())
    outputs = RegistrationOutputs(first.transform, first.warpedVolume, first.entropyVolume, first.jacobianVolume)
    request = logic.prepare(nodes["fixed"], nodes["moving"], fast_config(alpha=3.0), outputs=outputs)
    computed = logic.compute(request.engineInputs)
    scene.RemoveNode(first.transform)
    scene.RemoveNode(first.warpedVolume)
    run = logic.apply(request, computed)
    assert run.transform is not first.transform and run.transform.GetScene() is scene
    assert run.warpedVolume is not first.warpedVolume and run.warpedVolume.GetScene() is scene
    assert run.entropyVolume is first.entropyVolume  # still there: overwritten
    assert nodes["moving"].GetParentTransformNode() is run.transform
    assert sorted(run.createdNodeIDs) == sorted([run.transform.GetID(), run.warpedVolume.GetID()])
    assert run.warnings == [
        f"output transform '{first.transform.GetName()}' was deleted during the registration: the result is in the "
        f"new node '{run.transform.GetName()}'",
        f"output warpedVolume '{first.warpedVolume.GetName()}' was deleted during the registration: the result is in "
        f"the new node '{run.warpedVolume.GetName()}'",
    ]


@pytest.mark.parametrize("role, change", [("fixed", lambda node: node.SetSpacing(6.0, 6.0, 5.5)),
                                          ("fixed", lambda node: node.SetOrigin(1.0, 2.0, 3.0)),
                                          ("moving", lambda node: node.SetIJKToRASDirections(-1, 0, 0, 0, -1, 0, 0, 0, 1))])
def test_an_input_grid_changed_during_the_run_is_refused(scene, role, change):
    """The user edits the fixed or moving volume's geometry (Volumes module) while the engine runs:
    the result is on the old grids, so nothing is written and the message says to run again."""
    nodes = phantom_nodes.add_phantom_volumes(scene, size=(16, 14, 12))
    logic = RegistrationLogic(scene)
    request = logic.prepare(nodes["fixed"], nodes["moving"], fast_config(levels=1))
    computed = logic.compute(request.engineInputs)
    change(nodes[role])
    before = node_ids(scene)
    with pytest.raises(InputNodeError, match=f"the {role} volume '{nodes[role].GetName()}' changed its size, spacing, "
                                             "origin or orientation during the registration; nothing was written"):
        logic.apply(request, computed)
    assert node_ids(scene) == before and nodes["moving"].GetParentTransformNode() is None


def test_one_result_applied_twice_gives_volumes_of_their_own(scene):
    nodes = phantom_nodes.add_phantom_volumes(scene, size=(16, 14, 12))
    logic = RegistrationLogic(scene)
    request = logic.prepare(nodes["fixed"], nodes["moving"], fast_config(levels=1))
    computed = logic.compute(request.engineInputs)
    first, second = logic.apply(request, computed), logic.apply(request, computed)
    assert first.warpedVolume is not second.warpedVolume
    kept = array(second.warpedVolume)
    volumes._voxel_view(first.warpedVolume)[:] = 0  # in place, e.g. slicer.util.arrayFromVolume's view
    first.warpedVolume.Modified()
    assert array(first.warpedVolume).max() == 0
    np.testing.assert_array_equal(array(second.warpedVolume), kept)


def test_a_node_is_never_put_under_a_transform_of_another_scene(scene):
    nodes = phantom_nodes.add_phantom_volumes(scene, size=(12, 10, 8))
    other_scene = slicer.vtkMRMLScene()
    foreign = other_scene.AddNewNodeByClass("vtkMRMLGridTransformNode", "foreign")
    with pytest.raises(RuntimeError, match="transform 'foreign' is not in the scene"):
        with SceneTransaction(scene) as writes:
            writes.set_parent_transform(nodes["moving"], foreign)
    assert nodes["moving"].GetTransformNodeID() is None
    other_scene.Clear(1)


# ---------------------------------------------------------------------- inputs under VoxelOpt's transforms
def test_swapping_fixed_and_moving_after_a_run(scene):
    """The old moving volume, under the result transform, becomes the fixed volume: it is
    registered as stored and taken out of that transform (never hardened), and the run says so."""
    nodes = phantom_nodes.add_phantom_volumes(scene)
    logic = RegistrationLogic(scene)
    first = logic.process(nodes["fixed"], nodes["moving"], fast_config())
    assert nodes["moving"].GetParentTransformNode() is first.transform
    stored = array(nodes["moving"]).copy()
    swapped = logic.process(nodes["moving"], nodes["fixed"], fast_config())
    assert nodes["moving"].GetParentTransformNode() is None
    assert nodes["fixed"].GetParentTransformNode() is swapped.transform
    np.testing.assert_array_equal(array(nodes["moving"]), stored)
    assert swapped.warnings[0] == (f"fixed volume 'moving' was under '{first.transform.GetName()}', the transform of an "
                                   "earlier VoxelOpt registration; it was taken out of it, as the registration uses the "
                                   "fixed volume as stored")
    assert volumes.same_geometry(swapped.warpedVolume, nodes["moving"])


def test_a_segmentation_under_a_voxelopt_transform_is_refused_without_advice_to_harden(scene):
    nodes = phantom_nodes.add_phantom_volumes(scene, with_segmentations=True)
    logic = RegistrationLogic(scene)
    segs = (nodes["fixed_segmentation"], nodes["moving_segmentation"])
    first = logic.process(nodes["fixed"], nodes["moving"], fast_config(), *segs)
    nodes["moving_segmentation"].SetAndObserveTransformNodeID(first.transform.GetID())  # to see it warped live
    before = node_ids(scene)
    with pytest.raises(InputNodeError) as refused:
        logic.process(nodes["fixed"], nodes["moving"], fast_config(alpha=3.0), *segs)
    message = str(refused.value)
    assert message.startswith(f"moving segmentation 'moving segmentation' is under '{first.transform.GetName()}', a "
                              "transform made by VoxelOpt")
    assert "take it out of that transform" in message and "Do not harden" in message and "right-click" not in message
    assert node_ids(scene) == before


def test_a_transform_above_the_voxelopt_transform_is_refused(scene):
    """Moving volume under the VoxelOpt transform, itself under the user's shift: the shift would
    be ignored silently, so the run is refused."""
    nodes = phantom_nodes.add_phantom_volumes(scene, size=(12, 10, 8))
    logic = RegistrationLogic(scene)
    first = logic.process(nodes["fixed"], nodes["moving"], fast_config(levels=1))
    shift = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "shift")
    first.transform.SetAndObserveTransformNodeID(shift.GetID())
    with pytest.raises(InputNodeError, match=f"moving volume 'moving' is under VoxelOpt transform '{first.transform.GetName()}', "
                                             "which is under transform 'shift'.*'shift' would be ignored"):
        logic.process(nodes["fixed"], nodes["moving"], fast_config(levels=1))


# ---------------------------------------------------------------------- the Dice table's omissions
def test_the_segments_the_dice_table_leaves_out_are_named(scene):
    """Scored are the segments present in both segmentations: the run names the others (only on
    one side by name, or without voxels on one side) and why."""
    nodes = phantom_nodes.add_phantom_volumes(scene, with_segmentations=True)
    fixed_seg, moving_seg = nodes["fixed_segmentation"], nodes["moving_segmentation"]
    fixed_seg.GetSegmentation().GetSegment(fixed_seg.GetSegmentation().GetSegmentIdBySegmentName("spleen")).SetName("milz")
    box = np.zeros(volumes.array_from_volume_node(nodes["fixed"]).shape, bool)
    box[8:12, 10:16, 12:20] = True
    add_segment(scene, fixed_seg, box, nodes["fixed"], "tumor")  # empty in the moving segmentation
    moving_seg.GetSegmentation().AddEmptySegment("", "tumor")
    add_segment(scene, moving_seg, box, nodes["moving"], "cyst")  # empty in the fixed segmentation
    fixed_seg.GetSegmentation().AddEmptySegment("", "cyst")
    run = RegistrationLogic(scene).process(nodes["fixed"], nodes["moving"], fast_config(), fixed_seg, moving_seg,
                                           showResult=False)
    assert not {"milz", "spleen", "tumor", "cyst"} & set(run.dice) and "liver" in run.dice
    summary = [text for text in run.warnings if text.startswith("the Dice table")]
    assert summary == [
        "the Dice table scores the segments present in both segmentations (matched by name), so it leaves out 4: "
        "'milz' is only in the fixed segmentation; 'spleen' is only in the moving segmentation (warped, not scored); "
        "'tumor' has no voxel in the moving segmentation; 'cyst' has no voxel in the fixed segmentation. A segment has "
        "no voxel when it is empty, lies outside its volume or is hidden by overlapping segments"
    ]


def test_segment_names_held_twice_are_named(scene):
    """Segments are matched by name: a second segment of one name is not matched, and the run says so."""
    nodes = phantom_nodes.add_phantom_volumes(scene, with_segmentations=True)
    fixed_seg, moving_seg = nodes["fixed_segmentation"], nodes["moving_segmentation"]
    fixed_seg.GetSegmentation().GetSegment(fixed_seg.GetSegmentation().GetSegmentIdBySegmentName("liver")).SetName("Spleen ")
    run = RegistrationLogic(scene).process(nodes["fixed"], nodes["moving"], fast_config(), fixed_seg, moving_seg,
                                           showResult=False)
    assert (f"fixed segmentation '{fixed_seg.GetName()}' has 2 segments named 'spleen' and 'Spleen ' (names are "
            "matched ignoring case and surrounding spaces): only the first is matched and scored; rename the others "
            "to score them") in run.warnings
    assert not any("moving segmentation" in text and "segments named" in text for text in run.warnings)


@pytest.mark.parametrize("role", ["fixed", "moving"])
def test_segments_without_voxels_on_their_volume_are_refused_before_the_engine(scene, monkeypatch, role):
    """Every matched segment is empty (or off the volume): refused by name while preparing, not by the
    engine after the features."""
    nodes = phantom_nodes.add_phantom_volumes(scene, with_segmentations=True, size=(24, 20, 16))
    fixed_seg, moving_seg = nodes["fixed_segmentation"], nodes["moving_segmentation"]
    empty = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "unpainted")
    scratch = np.zeros(volumes.array_from_volume_node(nodes[role]).shape, np.uint8)
    scratch[2:4, 2:4, 2:4] = 1
    (scratch_id,) = add_segment(scene, empty, scratch, nodes[role], "scratch")  # a binary labelmap source
    for name in segmentations.segment_names(moving_seg)[:2]:
        empty.GetSegmentation().AddEmptySegment("", name)
    empty.GetSegmentation().RemoveSegment(scratch_id)
    fixed_seg, moving_seg = (empty, moving_seg) if role == "fixed" else (fixed_seg, empty)
    logic = RegistrationLogic(scene)
    monkeypatch.setattr(logic, "compute", lambda *args, **kwargs: pytest.fail("the engine ran"))
    names = ", ".join(segmentations.segment_names(empty))
    with pytest.raises(InputNodeError, match=f"{role} segmentation 'unpainted': the segments used \\({names}\\) have "
                                             f"no voxel on the {role} volume's grid"):
        logic.process(nodes["fixed"], nodes["moving"], fast_config(), fixed_seg, moving_seg)


def test_segments_lost_by_the_warp_are_named():
    """The engine's ``labels_lost`` (scored, but no voxel left in the warped segmentation)."""
    labels = sitk.GetImageFromArray(np.array([[[0, 1, 2]]], np.uint8))
    names = {1: "liver", 2: "adrenal"}
    metrics = {"labels": [1, 2], "dice": {"1": 0.9, "2": 0.0}, "labels_lost": [2]}
    assert segmentations.unscored_warnings(names, ((), ()), labels, labels, metrics) == [
        "segment 'adrenal' is lost by the warp: no voxel in the warped segmentation (Dice 0)"]
    assert segmentations.unscored_warnings(names, ((), ()), labels, labels, {**metrics, "labels_lost": []}) == []


# ---------------------------------------------------------------------- closed-surface segmentations
@pytest.fixture
def surface_rules():
    """The closed-surface converter rules, which desktop Slicer registers and slicer-core does not."""
    factory = slicer.vtkSegmentationConverterFactory.GetInstance()
    rules = [slicer.vtkBinaryLabelmapToClosedSurfaceConversionRule(), slicer.vtkClosedSurfaceToBinaryLabelmapConversionRule()]
    for rule in rules:
        factory.RegisterConverterRule(rule)
    yield
    for rule in rules:
        factory.UnregisterConverterRule(rule)


def test_a_closed_surface_segmentation_is_exported_on_the_volume_grid_and_left_unchanged(scene, surface_rules):
    """The surfaces are converted at the reference volume's grid, whatever the segmentation's own
    conversion geometry (here a 3x finer grid: Slicer's export would convert there, 27 times
    the voxels, and resample), and the user's segmentation gains no labelmap representation."""
    from VoxelOptRegistrationLib.logic import _content_key

    nodes = phantom_nodes.add_phantom_volumes(scene, with_segmentations=True)
    segmentation, moving = nodes["moving_segmentation"], nodes["moving"]
    ids = [segmentation.GetSegmentation().GetNthSegmentID(i) for i in range(segmentation.GetSegmentation().GetNumberOfSegments())]
    from_labelmap = sitk.GetArrayFromImage(segmentations.export_labelmap(segmentation, ids, moving, "moving"))
    assert segmentation.CreateClosedSurfaceRepresentation()
    data = segmentation.GetSegmentation()
    data.SetSourceRepresentationName(SURFACE)
    data.RemoveRepresentation(LABELMAP)
    exported = sitk.GetArrayFromImage(segmentations.export_labelmap(segmentation, ids, moving, "moving"))
    origin, spacing, direction = volumes.node_geometry_ras(moving)
    fine = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "fine grid")
    volumes.set_volume_array(fine, np.zeros(tuple(3 * n for n in from_labelmap.shape), np.uint8), origin - direction @ spacing / 3,
                             spacing / 3, direction)
    segmentation.SetReferenceImageGeometryParameterFromVolumeNode(fine)
    parameters_before = data.SerializeAllConversionParameters()
    key = _content_key(segmentation)
    nodes_before = node_ids(scene)
    again = sitk.GetArrayFromImage(segmentations.export_labelmap(segmentation, ids, moving, "moving"))
    np.testing.assert_array_equal(again, exported)
    assert not data.ContainsRepresentation(LABELMAP) and _content_key(segmentation) == key
    assert data.SerializeAllConversionParameters() == parameters_before and node_ids(scene) == nodes_before
    liver = 5
    a, b = from_labelmap == liver, exported == liver
    assert 2 * (a & b).sum() / (a.sum() + b.sum()) > 0.95


# ---------------------------------------------------------------------- auto-update and clean-up
def test_a_run_leaves_the_registration_key_and_auto_update_of_its_inputs_alone(scene):
    """A run does not change what the auto-update key reads of its inputs (no endless re-runs),
    and a change after it makes the next automatic run due."""
    nodes = phantom_nodes.add_phantom_volumes(scene, with_segmentations=True)
    logic = RegistrationLogic(scene)
    node = logic.getParameterNode()
    logic.applyPreset(node, "fast")
    parameters.set_values(node, {"levels": 2, "featureSpacing": 5.0, "device": "cpu", "autoUpdate": True})
    for name, role in (("fixedVolume", "fixed"), ("movingVolume", "moving"), ("fixedSegmentation", "fixed_segmentation"),
                       ("movingSegmentation", "moving_segmentation")):
        parameters.set_node(node, name, nodes[role])
    key = logic.registrationInputsKey(node)
    assert not logic.autoUpdateDue(node, None)  # no run yet
    logic.processParameterNode(node)
    assert logic.registrationInputsKey(node) == key and not logic.autoUpdateDue(node, key)
    segment = nodes["moving_segmentation"].GetSegmentation().GetNthSegment(0)
    segment.SetName("renamed while the engine ran")
    assert logic.autoUpdateDue(node, key)
    parameters.set_value(node, "autoUpdate", False)
    assert not logic.autoUpdateDue(node, key)


def test_remove_run_nodes_leaves_no_display_node_behind(scene):
    nodes = phantom_nodes.add_phantom_volumes(scene, with_segmentations=True)
    logic = RegistrationLogic(scene)
    logic.process(nodes["fixed"], nodes["moving"], fast_config(levels=1))  # the colour tables, made once
    before = node_ids(scene)
    run = logic.process(nodes["fixed"], nodes["moving"], fast_config(levels=1, alpha=3.0), nodes["fixed_segmentation"],
                        nodes["moving_segmentation"])
    created_by_class = {scene.GetNodeByID(i).GetClassName() for i in run.createdNodeIDs}
    assert {"vtkMRMLGridTransformNode", "vtkMRMLSegmentationNode", "vtkMRMLTableNode"} <= created_by_class
    logic.removeRunNodes(run)
    assert node_ids(scene) == before
    # and a batch script's inputs, once a case is done: nothing of them is left
    empty = node_ids(scene)
    extra = phantom_nodes.add_phantom_volumes(scene, size=(12, 10, 8))
    assert node_ids(scene) != empty
    logic.removeNodes([extra["fixed"], extra["moving"], None])
    assert node_ids(scene) == empty
