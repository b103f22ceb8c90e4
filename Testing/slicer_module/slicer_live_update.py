"""Live parameter exploration benchmark: seconds per re-run when only solver parameters change.

Loads the real CT pair (moving A, fixed Adef: 192x160x48 at 2 mm) as volume nodes on headless
slicer-core, runs the module's Logic once through its parameter node (as the GUI does: features
computed, output nodes created), then re-runs it with changed solver parameters (alpha, thetas,
levels, k) with the feature cache warm and the output nodes reused, and prints each re-run split
into

* ``read``: reading the nodes into the engine (``prepare``, main thread);
* ``engine solver``: the engine's preparation, cached features and optimisation;
* ``engine outputs``: the engine's outputs (entropy, Jacobian, metrics; the warped image, computed
  on first use inside the node update, is counted here too);
* ``node update``: writing the output nodes (``apply``, main thread) without the warp.

    python Testing/slicer_module/slicer_live_update.py [--ct-dir ../shared/data/totalseg_ct] [--preset paper]

Issue 11's target: within 1 s per re-run on 2 CPU cores.
"""

import argparse
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
sys.path[:0] = [HERE, os.path.join(REPO, "VoxelOptSlicer"), os.path.join(REPO, "VoxelOptLib", "src")]

import slicer  # noqa: E402
from render_docs_images import load_volume  # noqa: E402
from VoxelOptRegistrationLib import RegistrationLogic, parameters  # noqa: E402

#: The parameter changes explored after the first run, one re-run each (GUI parameter names).
CHANGES = (
    {"alpha": 2.0},
    {"thetas": "50, 5, 0.5"},
    {"levels": 4},
    {"k": 2},
    {"alpha": 1.0, "k": 1, "levels": 5},
)


def timed_run(logic, node):
    """One Apply as the GUI does it; returns (featureCacheHit, {part: seconds}, wall seconds)."""
    start = time.perf_counter()
    request = logic.prepareParameterNode(node)
    computed = logic.compute(request.engineInputs)
    run = logic.applyParameterNode(node, request, computed)
    wall = time.perf_counter() - start
    engine = run.timings
    warp = engine.get("warp", 0.0)
    parts = {
        "read": engine["slicer_input"],
        "engine solver": sum(engine.get(k, 0.0) for k in ("prepare", "features_fixed", "features_moving", "solver")),
        "engine outputs": engine.get("outputs", 0.0) + warp,
        "node update": engine["slicer_output"] - warp,
    }
    return run.featureCacheHit, parts, wall


def main() -> None:
    import torch
    from voxelopt.config import PRESETS

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ct-dir", default=os.path.join(REPO, "..", "shared", "data", "totalseg_ct"))
    parser.add_argument("--preset", default="paper", choices=sorted(PRESETS))
    args = parser.parse_args()
    scene = slicer.vtkMRMLScene()
    slicer.mrmlScene = scene
    fixed = load_volume(scene, os.path.join(args.ct_dir, "Adef_img.nii.gz"), "CT fixed")
    moving = load_volume(scene, os.path.join(args.ct_dir, "A_img.nii.gz"), "CT moving")
    logic = RegistrationLogic(scene)
    node = logic.getParameterNode()
    logic.applyPreset(node, args.preset)
    parameters.set_value(node, "device", "cpu")
    parameters.set_node(node, "fixedVolume", fixed)
    parameters.set_node(node, "movingVolume", moving)
    print(f"CT pair {fixed.GetImageData().GetDimensions()} voxels, preset {args.preset}, torch threads {torch.get_num_threads()}")
    header = f"{'run':<34}{'read':>7}{'solver':>9}{'outputs':>9}{'nodes':>8}{'wall':>8}  cache"
    print(header)
    walls = []
    for index, change in enumerate(({},) + CHANGES):
        parameters.set_values(node, change)
        hit, parts, wall = timed_run(logic, node)
        label = "first run" if not change else ", ".join(f"{k}={v}" for k, v in change.items())
        print(f"{label:<34}{parts['read']:7.2f}{parts['engine solver']:9.2f}{parts['engine outputs']:9.2f}"
              f"{parts['node update']:8.2f}{wall:8.2f}  {'hit' if hit else 'miss'}")
        if index:
            walls.append(wall)
    print(f"re-runs with the feature cache warm: mean {sum(walls) / len(walls):.2f} s, max {max(walls):.2f} s (seconds, wall)")


if __name__ == "__main__":
    main()
