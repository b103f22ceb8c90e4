"""Apply twice with segmentations on the real CT pair, as the GUI does (outputs reused, moving volume
left under the transform in between), and print both runs' mean Dice and times.

    python Testing/slicer_module/measure_repeated_apply.py [--ct-dir ../shared/data/totalseg_ct] [--preset paper]

Issue 11 measured 0.462 then 0.090 before the fix; both figures must now be equal.
"""

import argparse
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
sys.path[:0] = [HERE, os.path.join(REPO, "VoxelOptSlicer"), os.path.join(REPO, "VoxelOptLib", "src")]

import slicer  # noqa: E402
from render_docs_images import ORGANS, load_volume  # noqa: E402
from VoxelOptRegistrationLib import RegistrationLogic, RegistrationOutputs  # noqa: E402
from VoxelOptRegistrationLib.segmentations import update_segmentation_from_labels  # noqa: E402
from VoxelOptRegistrationLib.volumes import sitk_from_volume_node  # noqa: E402


def main() -> None:
    import voxelopt

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--ct-dir", default=os.path.join(REPO, "..", "shared", "data", "totalseg_ct"))
    parser.add_argument("--preset", default="paper")
    args = parser.parse_args()
    scene = slicer.vtkMRMLScene()
    slicer.mrmlScene = scene
    fixed = load_volume(scene, os.path.join(args.ct_dir, "Adef_img.nii.gz"), "CT fixed")
    moving = load_volume(scene, os.path.join(args.ct_dir, "A_img.nii.gz"), "CT moving")
    segs = []
    for stem, reference in (("Adef_lab", fixed), ("A_lab", moving)):
        labels = load_volume(scene, os.path.join(args.ct_dir, stem + ".nii.gz"), stem, labelmap=True)
        seg = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", stem)
        update_segmentation_from_labels(seg, sitk_from_volume_node(labels), ORGANS, None, reference)
        scene.RemoveNode(labels)
        segs.append(seg)
    logic = RegistrationLogic(scene)
    config = voxelopt.RegistrationConfig.preset(args.preset, device="cpu")
    outputs = None
    for attempt in (1, 2):
        start = time.perf_counter()
        run = logic.process(fixed, moving, config, *segs, outputs=outputs)
        print(f"Apply {attempt}: mean Dice {run.metrics['dice_mean']:.4f}, {time.perf_counter() - start:.1f} s"
              f"{' (features from cache)' if run.featureCacheHit else ''}, moving under the transform: "
              f"{moving.GetParentTransformNode() is run.transform}")
        outputs = RegistrationOutputs(run.transform, run.warpedVolume, run.entropyVolume, run.jacobianVolume,
                                      run.warpedSegmentation, run.diceTable)


if __name__ == "__main__":
    main()
