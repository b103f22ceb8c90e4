"""The Slicer bridge at native CT size: time and peak memory of the module's Logic on slicer-core
(real MRML, no GUI), as a batch script or the Apply button runs it.

    python Testing/slicer_module/benchmark_bridge.py [--case native300] [--preset abdomen] [--no-warped-volume]
        [--keep-freed-memory]

The pseudo-CT pair of VoxelOptLib/benchmarks/benchmark.py (BTCV 2 <- 1, needs ../shared), resampled
to the case's native size, is loaded as volume nodes and its label maps as segmentations; then
``logic.process`` runs twice, the second time into the first run's output nodes with a solver
parameter changed (alpha), as a user exploring parameters does: the features come from the
Logic's cache. Printed per run: the prepare (read the scene), compute (the engine) and apply
(write the nodes) seconds, the mean Dice, and the process's peak memory so far.
``--keep-freed-memory`` first calls ``voxelopt.allocator.keep_freed_memory()``, as a headless batch
script that only registers may (README, *Batch scripting*); the module itself never does.
"""

import argparse
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
sys.path[:0] = [HERE, os.path.join(REPO, "VoxelOptSlicer"), os.path.join(REPO, "VoxelOptLib", "src"),
                os.path.join(REPO, "VoxelOptLib", "benchmarks")]

import slicer  # noqa: E402
from development_pairs import add_keep_freed_memory_option, apply_keep_freed_memory, machine_line  # noqa: E402
from render_docs_images import ORGANS, load_volume  # noqa: E402
from VoxelOptRegistrationLib import RegistrationLogic, RegistrationOutputs  # noqa: E402
from VoxelOptRegistrationLib.segmentations import update_segmentation_from_labels  # noqa: E402
from VoxelOptRegistrationLib.volumes import sitk_from_volume_node  # noqa: E402


def peak_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2


def main() -> None:
    import benchmark
    import voxelopt
    from voxelopt.config import DEFAULT_PRESET

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--case", default="native300", choices=["paper", *benchmark.NATIVE])
    parser.add_argument("--preset", default=DEFAULT_PRESET)
    parser.add_argument("--no-warped-volume", action="store_true",
                        help="the module's 'Warped volume' unticked: the transform alone, no full-size resampling")
    add_keep_freed_memory_option(parser)
    args = parser.parse_args()
    apply_keep_freed_memory(parser, args)
    with tempfile.TemporaryDirectory() as tmp:
        _, paths = benchmark.paper_pair(Path(tmp))
        if args.case != "paper":
            paths = benchmark.native_pair(paths, *benchmark.NATIVE[args.case], Path(tmp))
        scene = slicer.vtkMRMLScene()
        slicer.mrmlScene = scene
        fixed = load_volume(scene, str(paths[0]), "CT fixed")
        moving = load_volume(scene, str(paths[1]), "CT moving")
        segs = []
        for path, reference, name in ((paths[2], fixed, "fixed organs"), (paths[3], moving, "moving organs")):
            labels = load_volume(scene, str(path), name + " labels", labelmap=True)
            seg = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", name)
            update_segmentation_from_labels(seg, sitk_from_volume_node(labels), ORGANS, None, reference)
            scene.RemoveNode(labels)
            segs.append(seg)
    print(machine_line())
    print(f"{args.case}: fixed {fixed.GetImageData().GetDimensions()} voxels, preset {args.preset}; "
          f"scene loaded, peak {peak_gb():.2f} GB")
    logic = RegistrationLogic(scene)
    config = voxelopt.RegistrationConfig.preset(args.preset, device="cpu")
    outputs = None
    for attempt, alpha in ((1, config.alpha), (2, config.alpha * 1.5)):
        run_config = config.replace(alpha=alpha)
        start = time.perf_counter()
        request = logic.prepare(fixed, moving, run_config, *segs, outputs=outputs, warpedVolume=not args.no_warped_volume)
        prepared = time.perf_counter()
        computed = logic.compute(request.engineInputs)
        done = time.perf_counter()
        run = logic.apply(request, computed, showResult=True)
        end = time.perf_counter()
        print(f"Apply {attempt} (alpha {alpha:g}): {end - start:.1f} s = prepare {prepared - start:.1f} + compute "
              f"{done - prepared:.1f} + apply {end - done:.1f}; mean Dice {run.metrics['dice_mean']:.3f}"
              f"{', features from cache' if run.featureCacheHit else ''}; peak {peak_gb():.2f} GB", flush=True)
        outputs = RegistrationOutputs(run.transform, run.warpedVolume, run.entropyVolume, run.jacobianVolume,
                                      run.warpedSegmentation, run.diceTable)


if __name__ == "__main__":
    main()
