"""The ``voxelopt`` command end to end, including every kind of bad input a user can give."""

import argparse
import json
import os
import platform
import resource
import signal
import subprocess
import sys
import warnings

import numpy as np
import pytest
import SimpleITK as sitk

from testdata import count_calls, make_image, oblique_direction, smooth_random_volume, write_dicom_series
from voxelopt import RegistrationConfig
from voxelopt.cli import add_registration_options, config_from_options, main
from voxelopt.config import DEFAULT_PRESET, SCHEMA
from voxelopt.errors import InputWarning
from voxelopt.phantom import phantom_pair

FAST = ["--levels", "3", "--feature-spacing", "none", "--quiet"]
OUTPUT_NAMES = {"field.nii.gz", "warped.nii.gz", "warped_labels.nii.gz", "entropy.nii.gz", "jacobian.nii.gz", "metrics.json"}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("inputs")
    pair = phantom_pair(size=(60, 52, 44), spacing=(3.0, 3.0, 3.0), max_displacement_mm=8.0, seed=5)
    paths = {}
    for name in ("fixed", "moving", "fixed_labels", "moving_labels"):
        paths[name] = folder / f"{name}.nii.gz"
        sitk.WriteImage(getattr(pair, name), str(paths[name]))
    return paths


def run(args, capsys):
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_register_writes_the_stable_file_names(files, tmp_path, capsys):
    out = tmp_path / "out"
    code, stdout, _ = run(["register", files["fixed"], files["moving"], "--out-dir", out,
                           "--fixed-labels", files["fixed_labels"], "--moving-labels", files["moving_labels"],
                           "--levels", "3", "--alpha", "2.0", "--thetas", "150,15,1.5,0.5"], capsys)
    assert code == 0
    assert {p.name for p in out.iterdir()} == OUTPUT_NAMES
    assert [line for line in stdout.splitlines() if "pyramid level" in line][-1].endswith("pyramid level 3/3")
    # one progress line from 0 to 100 %: registration (the label scores last), then the files
    progress = [(float(line[1:6]), line[9:]) for line in stdout.splitlines() if line.startswith("[")]
    assert [f for f, _ in progress] == sorted(f for f, _ in progress) and progress[-1] == (100.0, "written")
    messages = [m for _, m in progress]
    assert messages.index("warping the moving image") < messages.index("scoring labels (Dice, HD95)") \
        < messages.index("registered") < messages.index("writing field.nii.gz")
    summary = json.loads((out / "metrics.json").read_text())
    assert summary["config"]["alpha"] == 2.0 and summary["config"]["thetas"] == [150.0, 15.0, 1.5, 0.5]
    assert summary["metrics"]["dice_mean"] > summary["metrics"]["dice_initial_mean"]
    assert set(summary["timings_s"]) >= {"features_fixed", "features_moving", "level_1", "level_3", "outputs", "total"}
    # the written field reproduces the written warped image through SimpleITK
    fixed, moving = sitk.ReadImage(str(files["fixed"])), sitk.ReadImage(str(files["moving"]))
    field = sitk.ReadImage(str(out / "field.nii.gz"))
    assert field.GetPixelID() == sitk.sitkVectorFloat64  # what DisplacementFieldTransform accepts
    default = float(sitk.GetArrayViewFromImage(moving).min())
    again = sitk.Resample(moving, fixed, sitk.DisplacementFieldTransform(field), sitk.sitkLinear, default, sitk.sitkFloat32)
    assert np.abs(sitk.GetArrayFromImage(again) - sitk.GetArrayFromImage(sitk.ReadImage(str(out / "warped.nii.gz")))).max() < 0.05

    # evaluate agrees with the registration's own metrics, from the field and from warped labels
    code, stdout, _ = run(["evaluate", "--fixed-labels", files["fixed_labels"], "--field", out / "field.nii.gz",
                           "--moving-labels", files["moving_labels"], "--out", tmp_path / "eval.json"], capsys)
    assert code == 0
    from_field = json.loads(stdout)
    # the same warp of the labels as register's: the same scores, not just close ones
    assert (from_field["dice"], from_field["hd95_mm"]) == (summary["metrics"]["dice"], summary["metrics"]["hd95_mm"])
    assert from_field["sdlogj"] == pytest.approx(summary["metrics"]["sdlogj"], abs=1e-4)
    assert json.loads((tmp_path / "eval.json").read_text()) == from_field
    code, stdout, _ = run(["evaluate", "--fixed-labels", files["fixed_labels"], "--moving-labels", files["moving_labels"],
                           "--warped-labels", out / "warped_labels.nii.gz"], capsys)
    assert json.loads(stdout)["dice"] == summary["metrics"]["dice"]


def test_evaluate_scores_fixed_labels_cropped_from_their_image_as_register_does(files, tmp_path, capsys):
    """Fixed labels stored on a block of their image's grid: register puts them on the image's
    grid (background outside the block) and scores there; evaluate, from the field or from the
    warped labels, scores on that same grid, so all three give one Dice (before, evaluate scored
    inside the block only and reported a far higher one)."""
    cropped = tmp_path / "fixed_labels_crop.nii.gz"
    labels = sitk.ReadImage(str(files["fixed_labels"]))
    sitk.WriteImage(labels[:, :, 10:30], str(cropped))
    out = tmp_path / "out"
    code, _, _ = run(["register", files["fixed"], files["moving"], "--out-dir", out, "--fixed-labels", cropped,
                      "--moving-labels", files["moving_labels"], *FAST], capsys)
    assert code == 0
    registered = json.loads((out / "metrics.json").read_text())["metrics"]
    code, stdout, _ = run(["evaluate", "--fixed-labels", cropped, "--moving-labels", files["moving_labels"],
                           "--warped-labels", out / "warped_labels.nii.gz"], capsys)
    assert code == 0 and json.loads(stdout)["dice"] == registered["dice"]
    code, stdout, _ = run(["evaluate", "--fixed-labels", cropped, "--moving-labels", files["moving_labels"],
                           "--field", out / "field.nii.gz"], capsys)
    from_field = json.loads(stdout)
    assert code == 0 and (from_field["dice"], from_field["hd95_mm"]) == (registered["dice"], registered["hd95_mm"])
    inside_block_only = _dice_inside(cropped, out / "warped_labels.nii.gz")
    assert inside_block_only > registered["dice_mean"] + 0.05  # what the block alone would have said


def _dice_inside(fixed_path, warped_path) -> float:
    """Mean Dice of the labels of ``fixed_path`` against ``warped_path`` resampled onto its grid."""
    fixed = sitk.ReadImage(str(fixed_path))
    warped = sitk.GetArrayFromImage(sitk.Resample(sitk.ReadImage(str(warped_path)), fixed, sitk.Transform(),
                                                  sitk.sitkNearestNeighbor, 0))
    f = sitk.GetArrayFromImage(fixed)
    labels = [v for v in np.unique(f) if v > 0]
    return float(np.mean([2 * np.sum((f == v) & (warped == v)) / (np.sum(f == v) + np.sum(warped == v)) for v in labels]))


def test_evaluate_refuses_what_register_refuses_and_writes_standard_json(files, tmp_path, capsys):
    """voxelopt evaluate checks its label maps and field as register does (one error line, exit
    2, nothing written) and writes NaN scores as null."""
    fixed_labels = sitk.ReadImage(str(files["fixed_labels"]))
    zero = sitk.Image(fixed_labels.GetSize(), sitk.sitkVectorFloat64, 3)
    zero.CopyInformation(fixed_labels)
    field = tmp_path / "zero_field.nii.gz"
    sitk.WriteImage(zero, str(field))
    far = sitk.Image(zero)
    far.SetOrigin(tuple(o + 500.0 for o in zero.GetOrigin()))  # a field of some other image's box
    far_field = tmp_path / "far_field.nii.gz"
    sitk.WriteImage(far, str(far_field))
    ct_as_labels = files["fixed"]  # an image (negative HU) given as labels
    flat = tmp_path / "flat_labels.nii.gz"
    sitk.WriteImage(fixed_labels[:, :, 10], str(flat))
    other_labels = tmp_path / "other_labels.nii.gz"  # labels present in only one map: nothing to score
    sitk.WriteImage(sitk.Cast(fixed_labels > 0, sitk.sitkUInt8) * 200, str(other_labels))
    cases = [
        (["--field", far_field, "--moving-labels", files["moving_labels"]], "does not cover the fixed labels' grid"),
        (["--field", field, "--moving-labels", ct_as_labels], "moving labels must hold non-negative integer labels"),
        (["--warped-labels", ct_as_labels, "--moving-labels", files["moving_labels"]], "warped labels must hold"),
        (["--field", field, "--moving-labels", flat], "moving labels must be a 3-D image"),
        (["--field", field, "--moving-labels", files["moving_labels"], "--out", tmp_path], "is a folder"),
        (["--field", field, "--warped-labels", files["moving_labels"], "--moving-labels", files["moving_labels"]],
         "give either --field or --warped-labels, not both"),
        (["--moving-labels", files["moving_labels"]], "give --field (a displacement field"),
    ]
    for extra, message in cases:
        code, stdout, err = run(["evaluate", "--fixed-labels", files["fixed_labels"], *extra], capsys)
        assert code == 2 and message in err and err.startswith("error: ") and stdout == "", (extra, err)
    code, stdout, _ = run(["evaluate", "--fixed-labels", files["fixed_labels"], "--field", field,
                           "--moving-labels", other_labels, "--out", tmp_path / "none.json"], capsys)
    assert code == 0 and "NaN" not in stdout
    scores = json.loads(stdout)
    assert scores["labels"] == [] and scores["dice_mean"] is None
    assert json.loads((tmp_path / "none.json").read_text()) == scores


def test_a_closed_standard_output_ends_the_command_quietly(files, monkeypatch, capsys):
    """``voxelopt evaluate ... | head -1`` once ``head`` has left: exit 141 (as a shell tool
    killed by SIGPIPE), no BrokenPipeError traceback."""
    class ClosedPipe:
        def write(self, text):
            raise BrokenPipeError(32, "Broken pipe")

        def flush(self):
            pass

    monkeypatch.setattr(sys, "stdout", ClosedPipe())
    code = main(["evaluate", "--fixed-labels", str(files["fixed_labels"]), "--moving-labels", str(files["moving_labels"]),
                 "--warped-labels", str(files["moving_labels"])])
    assert code == 141 and "Traceback" not in capsys.readouterr().err


def test_outputs_subsets_and_stale_files_of_an_earlier_run(files, tmp_path, capsys):
    out = tmp_path / "again"
    out.mkdir()
    (out / "notes.txt").write_text("mine")  # a user's file is never touched
    code, _, _ = run(["register", files["fixed"], files["moving"], "--out-dir", out, "--fixed-labels", files["fixed_labels"],
                      "--moving-labels", files["moving_labels"], *FAST], capsys)
    assert code == 0 and {p.name for p in out.iterdir()} == OUTPUT_NAMES | {"notes.txt"}
    # the same folder, no labels, a subset: the labelled run's files must not look like this run's
    code, _, _ = run(["register", files["fixed"], files["moving"], "--out-dir", out, "--outputs", "field,metrics",
                      "--field-grid", "fixed", *FAST], capsys)
    assert code == 0 and {p.name for p in out.iterdir()} == {"field.nii.gz", "metrics.json", "notes.txt"}
    field = sitk.ReadImage(str(out / "field.nii.gz"))
    assert field.GetSize() == sitk.ReadImage(str(files["fixed"])).GetSize()
    picture = tmp_path / "qa" / "overview.png"
    code, _, _ = run(["register", files["fixed"], files["moving"], "--out-dir", out, "--outputs", "metrics",
                      "--overview", picture, *FAST], capsys)
    assert code == 0 and picture.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    empty = tmp_path / "empty_mask.nii.gz"
    sitk.WriteImage(sitk.ReadImage(str(files["fixed_labels"])) * 0, str(empty))
    code, _, err = run(["register", files["fixed"], files["moving"], "--out-dir", out, "--fixed-mask", empty, *FAST], capsys)
    assert code == 2 and "fixed mask" in err
    code, _, err = run(["register", files["fixed"], files["moving"], "--out-dir", out, "--outputs", "labels", *FAST], capsys)
    assert code == 2 and "needs moving labels" in err
    code, _, err = run(["register", files["fixed"], files["moving"], "--out-dir", out, "--outputs", "field,wraped", *FAST], capsys)
    assert code == 2 and "wraped" in err
    assert {p.name for p in out.iterdir()} == {"metrics.json", "notes.txt"}  # errors wrote nothing


def test_output_options_that_shape_no_written_file_are_warnings(files, tmp_path, capsys):
    out = tmp_path / "subset"
    code, _, err = run(["register", files["fixed"], files["moving"], "--out-dir", out, "--outputs", "warped,metrics",
                        "--field-format", "h5", "--field-grid", "fixed", "--full-size-maps", *FAST], capsys)
    assert code == 0 and {p.name for p in out.iterdir()} == {"warped.nii.gz", "metrics.json"}
    for option in ("--field-format h5", "--field-grid fixed", "--full-size-maps"):
        assert f"warning: {option} has no effect: --outputs warped,metrics" in err
    code, _, err = run(["register", files["fixed"], files["moving"], "--out-dir", out, "--outputs", "field",
                        "--image-format", "nrrd", "--field-format", "h5", *FAST], capsys)
    assert code == 0 and "warning: --image-format nrrd has no effect" in err and "--field-format" not in err
    code, _, err = run(["register", files["fixed"], files["moving"], "--out-dir", out, "--outputs", "jacobian",
                        "--full-size-maps", *FAST], capsys)
    assert code == 0 and "warning" not in err


def test_other_output_formats(files, tmp_path, capsys):
    out = tmp_path / "formats"
    code, _, _ = run(["register", files["fixed"], files["moving"], "--out-dir", out, "--image-format", "nrrd",
                      "--field-format", "h5", *FAST], capsys)
    assert code == 0
    assert {p.name for p in out.iterdir()} == {"field.h5", "warped.nrrd", "entropy.nrrd", "jacobian.nrrd", "metrics.json"}
    transform = sitk.ReadTransform(str(out / "field.h5"))
    assert "DisplacementField" in transform.GetName() or "DisplacementField" in str(transform)


def test_demo_writes_outputs_and_overview(tmp_path, capsys):
    out = tmp_path / "demo"
    code, _, _ = run(["demo", "--out-dir", out, "--levels", "4", "--quiet"], capsys)
    assert code == 0
    names = {p.name for p in out.iterdir()}
    assert OUTPUT_NAMES <= names and {"overview.png", "fixed.nii.gz", "true_field.nii.gz"} <= names
    assert (out / "overview.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_console_script_is_installed():
    result = subprocess.run([sys.executable, "-m", "voxelopt.cli", "--version"], capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.startswith("voxelopt ")


def _bad_file(tmp_path, kind):
    path = tmp_path / f"{kind}.mha"  # MetaImage keeps NaN/inf voxels as they are
    if kind == "garbage":
        path.write_bytes(b"this is not an image")
    elif kind == "2d":
        sitk.WriteImage(sitk.Image([30, 30], sitk.sitkFloat32), str(path))
    elif kind == "vector":
        sitk.WriteImage(sitk.Image([30, 30, 30], sitk.sitkVectorFloat32, 2), str(path))
    elif kind == "nan":
        volume = smooth_random_volume((30, 30, 30))
        volume[5, 5, 5] = np.inf
        volume[6, 6, 6] = np.nan
        sitk.WriteImage(make_image(volume, (2.0, 2.0, 2.0)), str(path))
    elif kind == "tiny":
        sitk.WriteImage(make_image(smooth_random_volume((6, 6, 6)), (2.0, 2.0, 2.0)), str(path))
    elif kind == "far":
        sitk.WriteImage(make_image(smooth_random_volume((30, 30, 30)), (4.0, 4.0, 4.0), (900.0, 0.0, 0.0)), str(path))
    return path


@pytest.mark.parametrize(
    "moving_kind, extra, message",
    [
        ("missing", [], "moving image file not found"),
        ("garbage", [], "cannot read moving image"),
        ("2d", [], "must be a 3-D image"),
        ("vector", [], "must be a scalar image"),
        ("nan", [], r"moving image \S*nan\.mha contains 2 NaN or infinite voxel"),  # the file is named
        ("tiny", ["--preset", "paper"], "too small"),
        ("far", ["--init", "none"], "do not overlap"),
        (None, ["--alpha", "-1"], "alpha must be in \\(0, 100\\] voxels"),
        (None, ["--beta", "-1"], "beta must be in \\(0, 1e\\+06\\]"),
        (None, ["--thetas", ""], "thetas must not be empty"),
        (None, ["--k", "0"], "k must be from 1 to 3"),
        (None, ["--levels", "0"], "levels must be"),
        (None, ["--preset", "nope"], "unknown preset 'nope'"),
        (None, ["--device", "tpu"], "device must be"),
        (None, ["--features", "sift"], "unknown feature type sift"),
        (None, ["--field-format", "png"], "unknown field format"),
        (None, ["--overview", "qa.xyz"], r"--overview qa.xyz: give a file name ending in \.png"),
        (None, ["--overview", "qa"], r"--overview qa: give a file name ending in \.png"),
    ],
)
def test_bad_input_gives_a_clear_error_and_no_output(files, tmp_path, capsys, moving_kind, extra, message):
    moving = files["moving"] if moving_kind is None else _bad_file(tmp_path, moving_kind)
    out = tmp_path / "out"
    args = ["register", files["fixed"], moving, "--out-dir", out, "--quiet", "--levels", "3"]
    if "--preset" in extra:
        args.remove("--levels"), args.remove("3")
    code, stdout, stderr = run(args + extra, capsys)
    assert code == 2
    assert stderr.startswith("error: ") and len(stderr.strip().splitlines()) == 1
    import re
    assert re.search(message, stderr), stderr
    assert not out.exists()


def test_an_empty_item_in_a_list_option_is_a_mistake_not_a_shorter_list(files, tmp_path, capsys):
    for text in ("50,,5", "50,5,"):
        with pytest.raises(SystemExit) as stop:
            main(["register", str(files["fixed"]), str(files["moving"]), "--out-dir", str(tmp_path / "out"),
                  "--thetas", text])
        assert stop.value.code == 2 and f"expected a comma-separated list of numbers, got '{text}'" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_unwritable_output_path(files, tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    code, _, stderr = run(["register", files["fixed"], files["moving"], "--out-dir", blocker / "out", *FAST], capsys)
    assert code == 2 and "not a directory" in stderr
    assert blocker.read_text() == "x"


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs Linux's /proc, a folder that takes no new files")
def test_a_folder_that_takes_no_new_files_is_named_as_such(files, tmp_path, capsys, monkeypatch):
    """/proc exists and passes the permission check (as root), but no file can be created in it:
    the message says so, instead of an error number's text that reads as if /proc were missing,
    and before any work (register ran the whole registration before failing)."""
    code, _, stderr = run(["evaluate", "--fixed-labels", files["fixed_labels"], "--moving-labels",
                           files["moving_labels"], "--warped-labels", files["moving_labels"], "--out", "/proc/x.json"],
                          capsys)
    assert code == 2 and stderr.startswith("error: --out folder /proc "), stderr
    if os.access("/proc", os.W_OK):  # root: the permissions pass, the folder made in it fails
        assert "does not take new files (creating one there failed: " in stderr, stderr
    import voxelopt.io

    reads = count_calls(monkeypatch, voxelopt.io, "read_images")
    code, stdout, stderr = run(["register", files["fixed"], files["moving"], "--out-dir", "/proc/x", *FAST], capsys)
    assert code == 2 and reads == [] and stdout == "" and stderr.startswith("error: output directory /proc/x "), stderr
    if os.access("/proc", os.W_OK):
        assert "does not take new files (creating one in /proc failed: " in stderr, stderr


def test_an_overview_path_that_is_a_folder_is_refused_before_any_work(files, tmp_path, capsys):
    folder = tmp_path / "pictures"
    folder.mkdir()
    code, _, stderr = run(["register", files["fixed"], files["moving"], "--out-dir", tmp_path / "out",
                           "--overview", folder, *FAST], capsys)
    assert code == 2 and stderr.startswith(f"error: --overview {folder} is a folder")
    assert not (tmp_path / "out").exists() and not list(folder.iterdir())


def test_unwritable_feature_cache_is_refused_before_any_work(files, tmp_path, capsys, monkeypatch):
    import voxelopt.io

    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    reads = count_calls(monkeypatch, voxelopt.io, "read_images")
    code, _, stderr = run(["register", files["fixed"], files["moving"], "--out-dir", tmp_path / "out",
                           "--feature-cache", blocker / "cache", *FAST], capsys)
    assert code == 2 and stderr.startswith("error: --feature-cache directory") and "not a directory" in stderr
    assert reads == [] and not (tmp_path / "out").exists() and blocker.read_text() == "x"


def test_failure_while_writing_leaves_no_partial_output(files, tmp_path, monkeypatch):
    import voxelopt.result as result_module
    from voxelopt import RegistrationConfig, register
    from voxelopt.errors import InputError

    result = register(str(files["fixed"]), str(files["moving"]), RegistrationConfig.preset("paper", levels=3))
    calls = []

    def failing_write(image, path):
        calls.append(path)
        if len(calls) == 2:
            raise OSError("disk full")
        sitk.WriteImage(image, str(path))

    monkeypatch.setattr(result_module, "write_image", failing_write)
    out = tmp_path / "partial"
    with pytest.raises(OSError, match="disk full"):
        result.save(out)
    assert not out.exists()
    existing = tmp_path / "existing"
    existing.mkdir()
    (existing / "keep.txt").write_text("mine")
    calls.clear()
    with pytest.raises(OSError):
        result.save(existing)
    assert [p.name for p in existing.iterdir()] == ["keep.txt"]
    # the writes went to a hidden staging folder inside the destination, which is gone
    assert calls[0].parent.parent == existing and calls[0].parent.name.startswith(".") and not calls[0].parent.exists()
    # outputs named as one string, as --outputs takes them: the names, not the string's characters
    monkeypatch.undo()
    assert set(result.save(tmp_path / "one", outputs="field")) == {"field"}
    assert set(result.save(tmp_path / "two", outputs="metrics, field")) == {"field", "metrics"}
    with pytest.raises(InputError, match="wraped"):
        result.save(tmp_path / "bad", outputs="field,wraped")
    for nothing in ([], "", " , "):  # no name at all is its own mistake, not an unknown name
        with pytest.raises(InputError, match="^no outputs given; choose one or more of field, "):
            result.save(tmp_path / "bad", outputs=nothing)
    assert not (tmp_path / "bad").exists()


def test_labels_that_cannot_be_scored_are_said_so(files, tmp_path, capsys):
    """Fixed labels without moving labels, or two label maps with no value in common: the run
    goes on (the warp is still wanted) but says why nothing is scored, on the console and in
    metrics.json, instead of ignoring the labels silently or printing "Dice nan -> nan"."""
    out = tmp_path / "one_sided"
    code, _, err = run(["register", files["fixed"], files["moving"], "--out-dir", out, "--fixed-labels",
                        files["fixed_labels"], *FAST], capsys)
    summary = json.loads((out / "metrics.json").read_text())
    assert code == 0 and "warning: fixed labels were given without moving labels: nothing is scored" in err
    assert "dice_mean" not in summary["metrics"] and "without moving labels" in summary["warnings"][0]
    renumbered = tmp_path / "renumbered.nii.gz"
    sitk.WriteImage(sitk.Cast(sitk.ReadImage(str(files["moving_labels"])), sitk.sitkUInt16) * 1000, str(renumbered))
    out = tmp_path / "disjoint"
    code, stdout, err = run(["register", files["fixed"], files["moving"], "--out-dir", out, "--fixed-labels",
                             files["fixed_labels"], "--moving-labels", renumbered, *FAST[:-1]], capsys)
    summary = json.loads((out / "metrics.json").read_text())
    assert code == 0 and "warning: no label value is in both the fixed and the moving labels" in err
    assert "Dice and HD95: nothing scored (no label in both label maps)" in stdout and "nan" not in stdout
    assert summary["metrics"]["labels"] == [] and summary["metrics"]["dice_mean"] is None
    assert "no label value is in both" in summary["warnings"][-1]


def test_an_output_never_replaces_or_removes_an_input_of_the_run(files, tmp_path, capsys):
    """Registering onto the warped image of an earlier run in the same folder (a natural "go on
    from there" step) must not destroy that input: refused before any work, nothing touched."""
    import shutil

    from voxelopt import RegistrationConfig, register
    from voxelopt.errors import InputError

    chain = tmp_path / "chain"
    chain.mkdir()
    shutil.copy(files["moving"], chain / "warped.nii.gz")
    shutil.copy(files["moving_labels"], chain / "warped_labels.nii.gz")
    before = {p.name: p.read_bytes() for p in chain.iterdir()}
    for outputs in ([], ["--outputs", "field,metrics"]):  # replaced, or removed as an earlier run's output
        code, _, err = run(["register", files["fixed"], chain / "warped.nii.gz", "--moving-labels",
                            chain / "warped_labels.nii.gz", "--out-dir", chain, *outputs, *FAST], capsys)
        assert code == 2 and "is one of this run's inputs" in err and "choose another output directory" in err
        assert {p.name: p.read_bytes() for p in chain.iterdir()} == before
    code, _, err = run(["register", files["fixed"], files["moving"], "--out-dir", tmp_path / "fresh",
                        "--overview", chain / "warped.nii.gz", *FAST], capsys)
    assert code == 2 and not (tmp_path / "fresh").exists()
    code, _, err = run(["evaluate", "--fixed-labels", chain / "warped_labels.nii.gz", "--moving-labels",
                        files["moving_labels"], "--warped-labels", files["moving_labels"],
                        "--out", chain / "warped_labels.nii.gz"], capsys)
    assert code == 2 and "--out" in err and "is one of the inputs" in err and "give another file name" in err
    assert {p.name: p.read_bytes() for p in chain.iterdir()} == before
    # the library: files register() read are kept by save(), as are those the caller names
    result = register(str(files["fixed"]), str(chain / "warped.nii.gz"), RegistrationConfig.preset("paper", levels=3))
    assert str(chain / "warped.nii.gz") in result.input_files
    with pytest.raises(InputError, match="one of this run's inputs"):
        result.save(chain)
    result.input_files = ()
    with pytest.raises(InputError, match="would remove it"):
        result.save(chain, outputs="field", inputs=[chain / "warped_labels.nii.gz"])
    assert {p.name: p.read_bytes() for p in chain.iterdir()} == before
    assert set(result.save(chain)) >= {"warped"}  # nothing to protect: replaced as before


def test_an_output_that_cannot_be_moved_in_leaves_the_folder_as_it_was(files, tmp_path, capsys, monkeypatch):
    import voxelopt.output_dir as output_dir

    out = tmp_path / "out"
    code, _, _ = run(["register", files["fixed"], files["moving"], "--out-dir", out, "--moving-labels",
                      files["moving_labels"], *FAST], capsys)
    assert code == 0
    earlier = {p.name: p.read_bytes() for p in out.iterdir()}
    # a folder where an output goes: refused before any work
    (out / "entropy.nii.gz").unlink()
    (out / "entropy.nii.gz").mkdir()
    code, _, err = run(["register", files["fixed"], files["moving"], "--out-dir", out, *FAST], capsys)
    assert code == 2 and "entropy.nii.gz is a folder" in err
    (out / "entropy.nii.gz").rmdir()
    (out / "entropy.nii.gz").write_bytes(earlier["entropy.nii.gz"])
    # a move that fails half-way (the third file): every file moved in is taken out again, the
    # replaced and the stale ones (warped_labels: this run has no labels) are put back
    real_replace, moves = os.replace, []

    def failing_replace(source, target):
        if ".voxelopt-partial-" in str(source) and ".replaced" not in str(source) + str(target):
            moves.append(target)
            if len(moves) == 3:
                raise OSError("device busy")
        real_replace(source, target)

    monkeypatch.setattr(output_dir.os, "replace", failing_replace)
    code, _, err = run(["register", files["fixed"], files["moving"], "--out-dir", out, *FAST], capsys)
    assert code == 2 and "device busy" in err and len(moves) == 3
    assert {p.name: p.read_bytes() for p in out.iterdir()} == earlier  # hidden staging folder gone too


def test_features_command_reports_entropy_per_feature_type(files, tmp_path, capsys):
    out = tmp_path / "features"
    code, stdout, _ = run(["features", files["fixed"], files["moving"], "--types", "raw,mind", "--out-dir", out], capsys)
    assert code == 0
    results = json.loads((out / "entropy.json").read_text())
    assert set(results) == {"raw", "mind"}
    for stats in results.values():
        assert 0.0 <= stats["p10"] <= stats["median"] <= stats["p90"] <= stats["max_entropy"] == pytest.approx(np.log(27))
        assert sum(d * (b - a) for d, a, b in zip(stats["density"], stats["bin_edges"], stats["bin_edges"][1:])) == pytest.approx(1.0)
    assert (out / "entropy.png").read_bytes()[:4] == b"\x89PNG"
    assert "mind: mean" in stdout


def test_features_command_checks_the_intensities_as_register_does(files, tmp_path, capsys):
    shifted = {}
    for name in ("fixed", "moving"):
        shifted[name] = tmp_path / f"{name}_uint16.nii.gz"
        sitk.WriteImage(sitk.Cast(sitk.ReadImage(str(files[name])) + 1024, sitk.sitkUInt16), str(shifted[name]))
    code, _, err = run(["features", shifted["fixed"], shifted["moving"], "--types", "raw", "--out-dir", tmp_path / "both"],
                       capsys)
    assert code == 0 and err.count("no voxel below 0") == 2 and err.startswith("warning: fixed image")
    code, _, err = run(["features", shifted["fixed"], files["moving"], "--types", "raw", "--out-dir", tmp_path / "one"],
                       capsys)
    assert code == 2 and "different units" in err and not (tmp_path / "one").exists()


def test_features_of_a_featureless_pair_have_maximal_entropy(tmp_path, capsys):
    flat = make_image(np.full((24, 24, 24), 40.0, np.float32), (2.0, 2.0, 2.0))
    path = tmp_path / "flat.nii.gz"
    sitk.WriteImage(flat, str(path))
    code, _, _ = run(["features", path, path, "--types", "raw", "--init", "none", "--out-dir", tmp_path / "f"], capsys)
    assert code == 0
    stats = json.loads((tmp_path / "f" / "entropy.json").read_text())["raw"]
    assert stats["relative_mean"] == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize("option", [["--features", "raw"], ["--thetas", "1,2"], ["--levels", "2"], ["--alpha", "2"],
                                    ["--refine-iterations", "5"], ["--no-filter-cost"], ["--search-fraction", "0.5"]])
def test_features_command_offers_only_the_options_it_uses(option, files, tmp_path, capsys):
    """The solver's options would change nothing in the diagnostic, and its feature types come from --types."""
    out = tmp_path / "features"
    with pytest.raises(SystemExit) as stop:
        main(["features", str(files["fixed"]), str(files["moving"]), "--types", "raw", *option, "--out-dir", str(out)])
    assert stop.value.code == 2 and f"unrecognized arguments: {' '.join(option)}" in capsys.readouterr().err
    assert not out.exists()


def _changed_value(spec):
    """A valid value of ``spec`` other than its default, and its command-line words."""
    special = {"features": ("raw", ["raw"]), "weights": ("w.pt", ["w.pt"]), "device": ("cuda:1", ["cuda:1"]),
               "feature_spacing": (None, ["none"]), "hu_window": ((-100.0, 200.0), ["-100", "200"]),
               "sigma_range": ((0.2, 0.4), ["0.2", "0.4"]), "thetas": ((10.0, 1.0), ["10,1"])}
    if spec.name in special:
        return special[spec.name]
    if spec.type is bool:
        return (not spec.default), []
    if spec.choices:
        value = next(c for c in spec.choices if c != spec.default)
        return value, [value]
    value = spec.default + 1 if spec.maximum is None or spec.default + 1 <= spec.maximum else spec.default - 0.25
    return value, [str(value)]


def test_every_config_field_is_an_option_that_reaches_the_config():
    parser = argparse.ArgumentParser()
    add_registration_options(parser)
    assert config_from_options(parser.parse_args([])) == RegistrationConfig.preset(DEFAULT_PRESET) == RegistrationConfig()
    assert config_from_options(parser.parse_args(["--preset", "fast"])) == RegistrationConfig.preset("fast")
    for name, spec in SCHEMA.items():
        value, words = _changed_value(spec)
        flag = "--" + name.replace("_", "-")
        if spec.type is bool:
            flag = flag if value else "--no-" + name.replace("_", "-")
        with warnings.catch_warnings():  # some options do not apply to accurate: a warning, not the point here
            warnings.simplefilter("ignore", InputWarning)
            config = config_from_options(parser.parse_args(["--preset", "accurate", flag, *words]))
        assert getattr(config, name) == value != spec.default, name
        assert config.replace(**{name: getattr(RegistrationConfig.preset("accurate"), name)}) == RegistrationConfig.preset("accurate")
    help_text = parser.format_help()
    for name, spec in SCHEMA.items():
        assert "--" + name.replace("_", "-") in help_text
    assert "--alpha VOXELS" in help_text and "--feature-spacing MM|none" in help_text and "LOW_HU HIGH_HU" in help_text
    assert "only with adaptive message passing and sigma_mode 'paper'" in " ".join(help_text.split())


LIGHT_COMMANDS = """
import sys
import warnings
import voxelopt, voxelopt.config, voxelopt.errors, voxelopt.phantom
from voxelopt.cli import main
for argv in ([], ["register", "in.nii.gz", "m.nii.gz", "--out-dir", "o", "--alpha", "-1"],
             ["register", "missing.nii.gz", "m.nii.gz", "--out-dir", "o"],
             ["register", "in.nii.gz", "m.nii.gz", "--out-dir", "o", "--features", "mind+bogus"],
             ["evaluate", "--fixed-labels", "f.nii.gz", "--moving-labels", "m.nii.gz"], ["--help"], ["register", "--help"]):
    try:
        code = main(argv)
    except SystemExit as exit:
        code = exit.code
    print("exit", code)
print("torch imported:", "torch" in sys.modules)
"""


def test_import_help_and_argument_errors_do_not_import_torch(tmp_path):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    out = subprocess.run([sys.executable, "-c", LIGHT_COMMANDS], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120)
    exits = [line for line in out.stdout.splitlines() if line.startswith("exit ")]
    assert exits == ["exit 2", "exit 2", "exit 2", "exit 2", "exit 2", "exit 0", "exit 0"], out.stdout + out.stderr
    assert "error: alpha must be in (0, 100] voxels" in out.stderr and "error: fixed image file not found" in out.stderr
    assert "error: unknown feature type bogus; available: mind, obelisk" in out.stderr
    assert "error: give --field (a displacement field" in out.stderr
    assert out.stdout.strip().splitlines()[-1] == "torch imported: False"
    assert not (tmp_path / "o").exists()


def test_ctrl_c_prints_one_line_and_exits_130(tmp_path):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    # The command starts with Ctrl-C at its default action, as from a terminal: a test run started
    # as a background job of a non-interactive shell ignores SIGINT, the child inherits that, and
    # Python leaves an inherited "ignore" alone (so the command ran to the end and exited 0).
    process = subprocess.Popen([sys.executable, "-m", "voxelopt.cli", "demo", "--out-dir", str(tmp_path / "demo")],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    assert process.stdout.readline().startswith("[  0.0%]")  # running, inside the command
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, f"stdout:\n{stdout}\nstderr:\n{stderr}"
    assert stderr == "error: interrupted\n"
    assert not (tmp_path / "demo").exists()


_FAULTS_SCRIPT = """
import ctypes, ctypes.util, resource, sys
from voxelopt.allocator import keep_freed_memory, release_free_memory
kept = keep_freed_memory() if sys.argv[1] != "default" else None
libc = ctypes.CDLL(ctypes.util.find_library("c"))
libc.malloc.restype, libc.malloc.argtypes, libc.free.argtypes = ctypes.c_void_p, (ctypes.c_size_t,), (ctypes.c_void_p,)
def touch_and_free():  # as a large array does: malloc, every page written, free
    block = libc.malloc(256 * 2**20)
    ctypes.memset(block, 1, 256 * 2**20)
    libc.free(block)
touch_and_free()
if sys.argv[1] == "release":
    release_free_memory()  # the kept pages go back to the kernel
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
touch_and_free()
print(kept, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_the_command_line_reuses_freed_memory_instead_of_page_faulting_it_in_again():
    def faults(mode):
        out = subprocess.run([sys.executable, "-c", _FAULTS_SCRIPT, mode], capture_output=True, text=True, check=True)
        kept, count = out.stdout.split()
        return kept, int(count)

    pages = 256 * 2**20 // resource.getpagesize()
    assert faults("default")[1] > pages // 2  # glibc unmaps the freed block: the second one faults in again
    kept, count = faults("keep")
    assert kept == "True" and count < pages // 20
    kept, count = faults("release")  # between stages the pipeline hands kept memory back
    assert kept == "True" and count > pages // 2


def test_images_read_concurrently_come_back_in_order_and_the_first_error_wins(files, tmp_path):
    from voxelopt.errors import InputError
    from voxelopt.io import read_images

    fixed, moving = str(files["fixed"]), str(files["moving"])
    images = read_images([(fixed, "fixed image"), (None, "fixed labels"), (moving, "moving image")])
    assert images[1] is None
    for image, path in ((images[0], fixed), (images[2], moving)):
        assert np.array_equal(sitk.GetArrayViewFromImage(image), sitk.GetArrayViewFromImage(sitk.ReadImage(path)))
    (tmp_path / "garbage.nii.gz").write_bytes(b"not an image")
    with pytest.raises(InputError, match="moving image file not found"):
        read_images([(fixed, "fixed image"), (str(tmp_path / "none.nii"), "moving image"),
                     (str(tmp_path / "garbage.nii.gz"), "fixed labels")])


def test_the_command_ends_without_teardown_yet_flushes_its_output_and_keeps_its_exit_status(files, tmp_path):
    """``python -m voxelopt.cli`` (the console script's ``console_main``) leaves by ``os._exit``:
    everything printed reaches a pipe, every file is in place, and the status is main()'s."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    out_dir = tmp_path / "out"
    done = subprocess.run([sys.executable, "-m", "voxelopt.cli", "register", str(files["fixed"]), str(files["moving"]),
                           "--fixed-labels", str(files["fixed_labels"]), "--moving-labels", str(files["moving_labels"]),
                           "--out-dir", str(out_dir), "--preset", "fast"], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.rstrip().splitlines()[-1].startswith("wrote ")  # the last line, after os._exit
    written = json.loads((out_dir / "metrics.json").read_text())
    assert written["metrics"]["dice_mean"] > written["metrics"]["dice_initial_mean"]
    assert sitk.ReadImage(str(out_dir / "warped.nii.gz")).GetSize() == sitk.ReadImage(str(files["fixed"])).GetSize()
    bad = subprocess.run([sys.executable, "-m", "voxelopt.cli", "register", str(tmp_path / "none.nii"),
                          str(files["moving"]), "--out-dir", str(tmp_path / "bad")], capture_output=True, text=True, env=env)
    assert bad.returncode == 2 and bad.stderr == f"error: fixed image file not found: {tmp_path / 'none.nii'}\n"
    assert not (tmp_path / "bad").exists()


def test_images_not_in_hounsfield_units_get_a_warning_line(files, tmp_path, capsys):
    """CT stored without its rescale intercept is registered, with one ``warning:`` line per image
    and the warnings in metrics.json; CT in HU gets none."""
    raw = {}
    for name in ("fixed", "moving"):
        raw[name] = tmp_path / f"{name}_raw.nii.gz"
        sitk.WriteImage(sitk.Cast(sitk.ReadImage(str(files[name])) + 1024.0, sitk.sitkUInt16), str(raw[name]))
    code, _, stderr = run(["register", raw["fixed"], raw["moving"], "--out-dir", tmp_path / "raw", *FAST], capsys)
    lines = [line for line in stderr.splitlines() if line.startswith("warning:")]
    assert code == 0 and [line.split(":")[1].strip() for line in lines] == ["fixed image", "moving image"]
    assert "UserWarning" not in stderr and "--hu-window" in lines[0]
    assert len(json.loads((tmp_path / "raw" / "metrics.json").read_text())["warnings"]) == 2
    code, _, stderr = run(["register", files["fixed"], files["moving"], "--out-dir", tmp_path / "hu", *FAST], capsys)
    assert code == 0 and "warning" not in stderr
    assert json.loads((tmp_path / "hu" / "metrics.json").read_text())["warnings"] == []


def test_dicom_series_folders_are_read(files, tmp_path, capsys):
    """A folder holding one DICOM series is an image: its slices in position order, its geometry
    from the tags (an oblique, anisotropic grid here), its voxels as stored; the registration
    runs on it as on a NIfTI file."""
    from voxelopt.io import read_image

    array = np.random.default_rng(0).normal(0.0, 300.0, (12, 20, 16)).round().astype(np.int16)
    image = make_image(array, spacing=(0.7, 0.8, 2.5), origin=(10.0, -20.0, 30.0), direction=oblique_direction())
    back = read_image(write_dicom_series(image, tmp_path / "oblique"), "fixed image")
    assert back.GetPixelID() == sitk.sitkInt16 and np.array_equal(sitk.GetArrayFromImage(back), array)
    np.testing.assert_allclose(back.GetSpacing(), image.GetSpacing(), atol=1e-6)
    np.testing.assert_allclose(back.GetOrigin(), image.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(back.GetDirection(), image.GetDirection(), atol=1e-6)
    folders = {name: write_dicom_series(sitk.ReadImage(str(files[name])), tmp_path / name, f"1.2.3.{n}")
               for n, name in enumerate(("fixed", "moving"))}
    out = tmp_path / "out"
    code, _, _ = run(["register", folders["fixed"], folders["moving"], "--out-dir", out,
                      "--fixed-labels", files["fixed_labels"], "--moving-labels", files["moving_labels"], *FAST], capsys)
    metrics = json.loads((out / "metrics.json").read_text())["metrics"]
    assert code == 0 and metrics["dice_mean"] > metrics["dice_initial_mean"] + 0.02
    nifti = {}  # the same voxels (int16) as NIfTI files: the same registration
    for name in ("fixed", "moving"):
        nifti[name] = tmp_path / f"{name}_int16.nii.gz"
        sitk.WriteImage(sitk.Cast(sitk.ReadImage(str(files[name])), sitk.sitkInt16), str(nifti[name]))
    code, _, _ = run(["register", nifti["fixed"], nifti["moving"], "--out-dir", tmp_path / "nifti",
                      "--fixed-labels", files["fixed_labels"], "--moving-labels", files["moving_labels"], *FAST], capsys)
    again = json.loads((tmp_path / "nifti" / "metrics.json").read_text())["metrics"]
    assert code == 0 and again["dice_mean"] == pytest.approx(metrics["dice_mean"], abs=1e-3)


def test_folders_without_exactly_one_dicom_series_are_refused(files, tmp_path, capfd):
    moving = files["moving"]
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("not DICOM")
    code, _, stderr = run(["register", empty, moving, "--out-dir", tmp_path / "a", *FAST], capfd)
    assert code == 2 and "fixed image folder" in stderr and "holds no DICOM series" in stderr
    assert "WARNING" not in stderr  # ITK's own "No Series were found" (capfd: C++ writes too)
    both = tmp_path / "both"
    small = sitk.ReadImage(str(files["fixed"]))[:8, :8, :4]
    write_dicom_series(small, both, "1.2.3.1", "arterial")
    write_dicom_series(small, both, "1.2.3.2", "venous")
    code, _, stderr = run(["register", both, moving, "--out-dir", tmp_path / "b", *FAST], capfd)
    assert code == 2 and "holds 2 DICOM series: 1.2.3.1 (4 files, \"arterial\"); 1.2.3.2 (4 files, \"venous\")" in stderr
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    gap = write_dicom_series(sitk.ReadImage(str(files["fixed"])), tmp_path / "gap")
    sorted(gap.iterdir())[7].unlink()  # a slice missing
    code, _, stderr = run(["register", gap, moving, "--out-dir", tmp_path / "c", *FAST], capfd)
    assert code == 2 and "has unevenly spaced slices" in stderr and not (tmp_path / "c").exists()


def test_help_shows_defaults_as_they_are_typed(capsys):
    """A two-value option's default is shown as two words (it takes two), a list's with commas."""
    with pytest.raises(SystemExit):
        main(["register", "--help"])
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps the help
    assert "--hu-window LOW_HU HIGH_HU intensity window" in text and "default: -800 500" in text
    assert "default: 50,5,0.5" in text and "-800,500" not in text


def test_a_dicom_series_with_a_gap_gives_only_the_error_line(files, tmp_path, capfd):
    """The gap is found from the slice positions before ITK reads the series, so ITK's own
    warning about non-uniform sampling (written to the process's standard error) never comes."""
    gap = write_dicom_series(sitk.ReadImage(str(files["fixed"])), tmp_path / "gap")
    sorted(gap.iterdir())[7].unlink()
    capfd.readouterr()
    code = main(["register", str(gap), str(files["moving"]), "--out-dir", str(tmp_path / "c"), *FAST])
    err = capfd.readouterr().err
    assert code == 2 and err.startswith("error: fixed image DICOM series") and len(err.splitlines()) == 1, err


def test_the_summary_says_when_no_voxel_keeps_a_positive_jacobian(capsys):
    """A field folded everywhere has no plain SDlogJ (log J of no voxel): the summary says why
    instead of printing ``nan``; otherwise it prints the number."""
    from types import SimpleNamespace

    from voxelopt.cli import _print_summary

    metrics = {"sdlogj": 0.5, "sdlogj_plain": float("nan"), "folding_percent": 100.0}
    _print_summary(SimpleNamespace(metrics=metrics, timings={"total": 1.0}, device="cpu"))
    out = capsys.readouterr().out
    assert "(plain no voxel with J > 0), folding 100.0000%" in out and "nan" not in out
    _print_summary(SimpleNamespace(metrics={**metrics, "sdlogj_plain": 0.25, "folding_percent": 0.0},
                                   timings={"total": 1.0}, device="cpu"))
    assert "SDlogJ 0.5000 (plain 0.2500), folding 0.0000%" in capsys.readouterr().out


def test_an_option_without_effect_in_the_run_is_a_warning_naming_when_it_applies():
    """``--refine-weight`` with ``fast`` (no refinement) and ``--sigma-range`` with the paper's sigma form
    change nothing: the run goes on, with one warning per option; an option that applies gives none."""
    parser = argparse.ArgumentParser()
    add_registration_options(parser)
    with pytest.warns(InputWarning) as caught:
        config = config_from_options(parser.parse_args(["--preset", "fast", "--refine-weight", "2",
                                                        "--sigma-range", "0.2", "0.4", "--alpha", "2"]))
    assert config.refine_weight == 2 and config.alpha == 2
    messages = sorted(str(w.message) for w in caught)
    assert len(messages) == 2, messages
    assert messages[0].startswith("--refine-weight has no effect in this run: it applies only with refine_iterations > 0")
    assert messages[1].startswith("--sigma-range has no effect in this run: it applies only with adaptive message passing "
                                  "and sigma_mode 'code'")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        config_from_options(parser.parse_args(["--refine-weight", "2", "--sigma-mode", "code", "--sigma-range", "0.2", "0.4"]))


@pytest.mark.parametrize("seed", ["-1", "1.5"])
def test_demo_refuses_a_seed_numpy_cannot_take(tmp_path, seed):
    out = subprocess.run([sys.executable, "-m", "voxelopt.cli", "demo", "--out-dir", str(tmp_path / "d"), "--seed", seed],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and f"argument --seed: expected a whole number >= 0, got '{seed}'" in out.stderr
    assert "Traceback" not in out.stderr and not (tmp_path / "d").exists()
