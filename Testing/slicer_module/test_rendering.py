"""The results rendered by real Slicer slice views, offscreen (trame-slicer, EGL), and the pictures tested.

Checks what a user sees: the entropy and Jacobian overlays are visible (in colour) over the grey
fixed volume without washing it out (det J = 1 adds nothing), folding (det J <= 0) shows up in green, and the live warp (moving volume under the
grid transform) changes the moving volume's slice towards the fixed one. The pictures are written
to ``$VOXELOPT_SCREENSHOT_DIR`` when set (else a temporary folder).
"""

import os

import numpy as np
import pytest

from slicer_test_helpers import requires_engine

if not os.environ.get("CI"):
    pytest.importorskip("trame_slicer")

from slicer_rendering import grab, make_app, save_png, set_layers, saturation  # noqa: E402

import slicer  # noqa: E402
from VoxelOptRegistrationLib import RegistrationLogic, phantom_nodes, volumes  # noqa: E402

pytestmark = requires_engine


@pytest.fixture(scope="module")
def shots(tmp_path_factory):
    import voxelopt

    out_dir = os.environ.get("VOXELOPT_SCREENSHOT_DIR") or str(tmp_path_factory.mktemp("screens"))
    previous = getattr(slicer, "mrmlScene", None)
    app, view = make_app(400, 400)
    scene = app.scene
    nodes = phantom_nodes.add_phantom_volumes(scene, max_displacement_mm=20.0)
    fixed, moving = nodes["fixed"], nodes["moving"]
    logic = RegistrationLogic(scene)
    run = logic.process(fixed, moving, voxelopt.RegistrationConfig.preset("fast", levels=2, feature_spacing=5.0, device="cpu"),
                        overlay="entropy", overlayOpacity=0.5)
    pictures = {}
    pictures["entropy"] = grab(view, fit=True)  # set up by the Logic: fixed + entropy at 50 %
    set_layers(scene, fixed, None, 0.0)
    pictures["fixed"] = grab(view)
    set_layers(scene, fixed, run.jacobianVolume, 0.5, additive=True)
    pictures["jacobian"] = grab(view)
    # A copy of the Jacobian map with a folding block (det J = -0.3) through every slice.
    folded = volumes.array_from_volume_node(run.jacobianVolume).copy()
    K, J, I = folded.shape
    folded[:, J // 2 - 4: J // 2 + 4, I // 2 - 4: I // 2 + 4] = -0.3
    volumes.set_volume_array(run.jacobianVolume, folded, *volumes.node_geometry_ras(run.jacobianVolume))
    pictures["jacobian_folding"] = grab(view)
    # Live warp: the moving volume as background, without and with its VoxelOpt transform.
    moving.SetAndObserveTransformNodeID(None)
    set_layers(scene, moving, None, 0.0)
    pictures["moving_unwarped"] = grab(view)
    moving.SetAndObserveTransformNodeID(run.transform.GetID())
    pictures["moving_warped"] = grab(view)
    for name, pixels in pictures.items():
        save_png(pixels, os.path.join(out_dir, f"test_render_{name}.png"))
    yield pictures
    slicer.mrmlScene = previous


def body(pictures):
    """Pixels inside the phantom's body (brighter than the dark air) in the fixed picture."""
    return pictures["fixed"].mean(axis=2) > 60


def test_fixed_volume_renders_in_grey(shots):
    fixed = shots["fixed"]
    assert body(shots).mean() > 0.2  # the volume fills a good part of the view
    assert np.percentile(saturation(fixed), 99) <= 3  # grey scale only


def test_entropy_overlay_is_visible_over_the_fixed_volume(shots):
    inside = body(shots)
    colour = saturation(shots["entropy"])
    assert (colour[inside] > 25).mean() > 0.5, "the inferno overlay should colour most of the body"
    assert np.abs(shots["entropy"].astype(int) - shots["fixed"]).mean() > 10


def test_jacobian_overlay_is_visible_and_folding_is_green(shots):
    jac = shots["jacobian"].astype(int)
    fixed = shots["fixed"].astype(int)
    inside = body(shots)
    # det J about 1 adds nothing (black, additive): the CT is not washed out ...
    assert np.abs(jac - fixed)[inside].mean() < 25
    assert np.median(np.abs(jac - fixed)[inside]) < 12
    # ... while compression and expansion tint it (blue / red).
    assert (saturation(shots["jacobian"])[inside] > 12).mean() > 0.05
    green = lambda p: (p[:, :, 1].astype(int) - np.maximum(p[:, :, 0], p[:, :, 2]).astype(int)) > 60  # noqa: E731
    assert green(shots["jacobian_folding"]).sum() > 500, "folding voxels must stand out in green"
    assert green(shots["jacobian"]).sum() < 0.2 * green(shots["jacobian_folding"]).sum()


def test_live_warp_changes_the_moving_slice_towards_the_fixed_one(shots):
    fixed = shots["fixed"].astype(float)
    unwarped = shots["moving_unwarped"].astype(float)
    warped = shots["moving_warped"].astype(float)
    assert np.abs(warped - unwarped).mean() > 2.0, "the transform must change the rendered slice"
    assert np.abs(warped - fixed).mean() < 0.8 * np.abs(unwarped - fixed).mean()


def test_the_overlay_shown_has_its_colour_legend_and_a_view_without_one_none(shots):
    """Slicer's colour legend (white title and labels in the right fifth of the view, where the
    phantom leaves the view black) appears with the entropy and the Jacobian overlays, and goes
    when the overlay is taken away (the fixed and moving pictures)."""
    def legend_text(name):
        strip = shots[name][:, int(shots[name].shape[1] * 0.8):].astype(int)
        return int((strip.min(axis=2) > 200).sum())

    assert legend_text("entropy") > 50 and legend_text("jacobian") > 50
    assert legend_text("fixed") == legend_text("moving_unwarped") == legend_text("moving_warped") == 0
