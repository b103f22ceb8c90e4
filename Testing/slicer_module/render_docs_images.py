"""Render the README's Slicer pictures into docs/images/ with real Slicer slice views, offscreen.

    python Testing/slicer_module/render_docs_images.py [--ct-dir ../shared/data/totalseg_ct] [--out docs/images]

With ``--ct-dir`` (a folder holding ``Adef_img.nii.gz``/``A_img.nii.gz`` and their ``*_lab``
label maps) the pictures show a real CT pair: A (moving) registered onto Adef (fixed); otherwise
the synthetic phantom. Data are read through Slicer storage nodes; only the PNGs are written.
"""

import argparse
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
sys.path[:0] = [HERE, os.path.join(REPO, "VoxelOptSlicer"), os.path.join(REPO, "VoxelOptLib", "src")]

from slicer_rendering import grab, make_app, save_png, set_layers  # noqa: E402

import slicer  # noqa: E402
from VoxelOptRegistrationLib import RegistrationLogic, phantom_nodes  # noqa: E402
from VoxelOptRegistrationLib.segmentations import update_segmentation_from_labels  # noqa: E402
from VoxelOptRegistrationLib.volumes import sitk_from_volume_node  # noqa: E402

ORGANS = {1: "spleen", 2: "right kidney", 3: "left kidney", 4: "gallbladder", 5: "esophagus", 6: "liver", 7: "stomach",
          8: "aorta", 9: "inferior vena cava", 10: "portal and splenic vein", 11: "pancreas", 12: "right adrenal gland",
          13: "left adrenal gland"}


def load_volume(scene, path, name, labelmap=False):
    node = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode" if labelmap else "vtkMRMLScalarVolumeNode", name)
    storage = scene.AddNewNodeByClass("vtkMRMLVolumeArchetypeStorageNode")
    storage.SetFileName(path)
    if not storage.ReadData(node):
        raise RuntimeError(f"cannot read {path}")
    scene.RemoveNode(storage)
    node.CreateDefaultDisplayNodes()
    return node


def labeled_panels(pictures, titles):
    from PIL import Image, ImageDraw

    import numpy as np

    height, width = pictures[0].shape[:2]
    canvas = Image.new("RGB", (width * len(pictures), height + 28), (20, 20, 20))
    draw = ImageDraw.Draw(canvas)
    for i, (pixels, title) in enumerate(zip(pictures, titles)):
        canvas.paste(Image.fromarray(pixels), (i * width, 28))
        draw.text((i * width + 8, 8), title, fill=(235, 235, 235))
    return np.asarray(canvas)


def main() -> None:
    import voxelopt

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--ct-dir", default=os.path.join(REPO, "..", "shared", "data", "totalseg_ct"))
    parser.add_argument("--out", default=os.path.join(REPO, "docs", "images"))
    parser.add_argument("--preset", default="paper")
    args = parser.parse_args()

    app, view = make_app(520, 440)
    scene = app.scene
    fixed_seg = moving_seg = None
    if os.path.isfile(os.path.join(args.ct_dir, "Adef_img.nii.gz")):
        fixed = load_volume(scene, os.path.join(args.ct_dir, "Adef_img.nii.gz"), "CT fixed")
        moving = load_volume(scene, os.path.join(args.ct_dir, "A_img.nii.gz"), "CT moving")
        for role, stem, ref in (("fixed", "Adef_lab", fixed), ("moving", "A_lab", moving)):
            labels = load_volume(scene, os.path.join(args.ct_dir, stem + ".nii.gz"), stem, labelmap=True)
            seg = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", f"{role} organs")
            seg.CreateDefaultDisplayNodes()
            update_segmentation_from_labels(seg, sitk_from_volume_node(labels), ORGANS, None, ref)
            seg.GetDisplayNode().SetVisibility(False)
            scene.RemoveNode(labels)
            fixed_seg, moving_seg = (seg, moving_seg) if role == "fixed" else (fixed_seg, seg)
        config = voxelopt.RegistrationConfig.preset(args.preset, device="cpu")
    else:
        nodes = phantom_nodes.add_phantom_volumes(scene, max_displacement_mm=20.0, with_segmentations=True)
        fixed, moving = nodes["fixed"], nodes["moving"]
        fixed_seg, moving_seg = nodes["fixed_segmentation"], nodes["moving_segmentation"]
        config = voxelopt.RegistrationConfig.preset("fast", levels=2, feature_spacing=5.0, device="cpu")
    for node in (fixed, moving):
        node.GetDisplayNode().SetAutoWindowLevel(False)
        node.GetDisplayNode().SetWindowLevel(400, 40)  # abdominal soft-tissue window
    logic = RegistrationLogic(scene)
    run = logic.process(fixed, moving, config, fixed_seg, moving_seg, overlay="entropy", overlayOpacity=0.55)
    if run.warpedSegmentation is not None:
        run.warpedSegmentation.GetDisplayNode().SetVisibility(False)
    print(run.summary())

    entropy = grab(view, fit=True)
    set_layers(scene, fixed, run.jacobianVolume, 0.55, additive=True)
    jacobian = grab(view)
    set_layers(scene, fixed, None, 0.0)
    fixed_only = grab(view)
    moving.SetAndObserveTransformNodeID(None)
    set_layers(scene, moving, None, 0.0)
    unwarped = grab(view)
    moving.SetAndObserveTransformNodeID(run.transform.GetID())
    warped = grab(view)
    moving.SetAndObserveTransformNodeID(None)
    unwarped_on_fixed = slicer.vtkSlicerVolumesLogic.ResampleVolumeToReferenceVolume(moving, fixed)
    moving.SetAndObserveTransformNodeID(run.transform.GetID())
    qa_pictures, qa_titles = [], []
    for other, title in ((unwarped_on_fixed, "before: fixed / moving"), (run.warpedVolume, "after: fixed / warped")):
        set_layers(scene, logic.createCheckerboard(fixed, other, 20.0))
        qa_pictures.append(grab(view))
        qa_titles.append(f"checkerboard {title}")
    if run.warpedSegmentation is not None:
        run.warpedSegmentation.GetDisplayNode().SetVisibility(True)  # outlines, set by the Logic
        set_layers(scene, fixed)
        qa_pictures.append(grab(view))
        qa_titles.append("warped organs (outlines) over the fixed CT")

    save_png(labeled_panels([fixed_only, entropy], ["fixed", "fixed + entropy map (inferno: dark = confident)"]),
             os.path.join(args.out, "slicer_entropy_overlay.png"), colors=128)
    save_png(labeled_panels([fixed_only, jacobian], ["fixed", "fixed + Jacobian (blue < 1 < red, added; folding green)"]),
             os.path.join(args.out, "slicer_jacobian_overlay.png"), colors=128)
    save_png(labeled_panels([unwarped, warped, fixed_only], ["moving", "moving under the VoxelOpt transform (live)", "fixed"]),
             os.path.join(args.out, "slicer_live_warp.png"), colors=128)
    save_png(labeled_panels(qa_pictures, qa_titles), os.path.join(args.out, "slicer_qa.png"), colors=128)
    print("written to", args.out)


if __name__ == "__main__":
    main()
