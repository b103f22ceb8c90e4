"""The dataset evaluation harness (package voxelopt_eval) on tiny synthetic pairs.

Everything here runs in well under a minute: phantoms of 60x52x44 voxels at 3 mm and a three-level
pyramid. Peer adapters are tested only when their package imports (skipped otherwise).
"""

import csv
import gzip
import importlib
import json
import os
import subprocess
import shutil
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import SimpleITK as sitk

from voxelopt import InputError, RegistrationConfig
from voxelopt.errors import ConfigError
from voxelopt.phantom import phantom_pair
from testdata import count_calls
from voxelopt_eval import (
    PEERS,
    InitialAlignment,
    Job,
    MethodOutput,
    MethodSpec,
    PairSpec,
    Peer,
    ablation_variants,
    evaluate_field,
    get_peer,
    peer_spec,
    read_pairs,
    register_peer,
    run_ablation,
    run_evaluation,
    run_job,
    run_method,
    voxelopt_spec,
)
from voxelopt_eval import methods as method_registry, report, runner
from voxelopt_eval.cli import main

SIZE, SPACING = (60, 52, 44), (3.0, 3.0, 3.0)
CONFIG = RegistrationConfig.preset("paper", levels=3, feature_spacing=None, device="cpu")


def _write(image, path):
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path))
    return path


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Two phantom pairs (images in data/, the CSV in lists/ with relative paths) and three subjects."""
    root = tmp_path_factory.mktemp("eval")
    rows = []
    for seed in (1, 2):
        pair = phantom_pair(size=SIZE, spacing=SPACING, max_displacement_mm=8.0, seed=seed)
        for name in ("fixed", "moving", "fixed_labels", "moving_labels"):
            _write(getattr(pair, name), root / "data" / f"p{seed}_{name}.nii.gz")
        _write(pair.true_field, root / "data" / f"p{seed}_gt.nii.gz")
        rows.append([f"pair{seed}"] + [f"../data/p{seed}_{n}.nii.gz" for n in ("fixed", "moving", "fixed_labels", "moving_labels")]
                    + [f"../data/p{seed}_gt.nii.gz"])
    (root / "lists").mkdir()
    pairs_csv = root / "lists" / "pairs.csv"
    with pairs_csv.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "fixed", "moving", "fixed_labels", "moving_labels", "gt_field"])
        writer.writerows(rows)
    subjects_csv = root / "subjects.csv"
    subjects_csv.write_text("id,image,labels\n" + "".join(
        f"S{i},data/p{s}_{kind}.nii.gz,data/p{s}_{kind.replace('fixed', 'fixed_labels').replace('moving', 'moving_labels')}.nii.gz\n"
        for i, (s, kind) in enumerate([(1, "fixed"), (1, "moving"), (2, "fixed")])))
    return {"root": root, "pairs_csv": pairs_csv, "subjects_csv": subjects_csv}


@pytest.fixture(scope="module")
def serial_run(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("serial")
    return out, run_evaluation(read_pairs(str(data["pairs_csv"])), [voxelopt_spec(CONFIG)], out, threads=1, progress=False)


# ============================================================================ pairs
def test_pairs_csv_resolves_paths_relative_to_the_csv(data):
    pairs = read_pairs(str(data["pairs_csv"]))
    assert [p.pair_id for p in pairs] == ["pair1", "pair2"]
    root = data["root"].resolve()
    assert pairs[0].fixed == str(root / "data" / "p1_fixed.nii.gz")
    assert pairs[1].moving_labels == str(root / "data" / "p2_moving_labels.nii.gz")
    assert pairs[0].gt_field == str(root / "data" / "p1_gt.nii.gz")


def test_subject_list_gives_all_ordered_pairs_moving_first(data):
    pairs = read_pairs(str(data["subjects_csv"]))
    # itertools.permutations order, (moving, fixed): (S0,S1), (S0,S2), (S1,S0), ...
    assert [p.pair_id for p in pairs] == ["S1<-S0", "S2<-S0", "S0<-S1", "S2<-S1", "S0<-S2", "S1<-S2"]
    first = pairs[0]
    assert first.moving.endswith("p1_fixed.nii.gz") and first.fixed.endswith("p1_moving.nii.gz")
    assert first.moving_labels.endswith("p1_fixed_labels.nii.gz")


@pytest.mark.parametrize("text, message", [
    ("a,b\n1,2\n", "unknown CSV layout"),
    ("fixed,moving,fixed_labels,moving_labels\nnope.nii.gz,x.nii.gz,,\n", "row 2: fixed file"),
    ("id,image,labels\nonly,data/p1_fixed.nii.gz,\n", "at least two subjects"),
    ("id,image\nA,data/p1_fixed.nii.gz\nA,data/p1_moving.nii.gz\n", "occurs twice"),
    ("fixed,moving,fixed_labels,moving_labels\ndata/p1_fixed.nii.gz,data/p1_moving.nii.gz,data/p1_fixed_labels.nii.gz,\n",
     "give both fixed_labels and moving_labels"),
    ("id,image,label\nA,data/p1_fixed.nii.gz,data/p1_fixed_labels.nii.gz\nB,data/p1_moving.nii.gz,x\n",
     "column 'label' is not one the evaluation reads; did you mean 'labels'"),
])
def test_bad_csv_is_a_clear_error(data, text, message):
    path = data["root"] / "bad.csv"
    path.write_text(text)
    with pytest.raises(InputError, match=message):
        read_pairs(str(path))


def test_a_csv_saved_with_a_byte_order_mark_reads_as_without(data):
    """Excel's "CSV UTF-8" starts with a BOM: it is no part of the first column's name."""
    text = "id,image,labels\nA,data/p1_fixed.nii.gz,\nB,data/p1_moving.nii.gz,\n"
    path = data["root"] / "bom.csv"
    path.write_bytes("\ufeff".encode("utf-8") + text.encode("utf-8"))
    assert [p.pair_id for p in read_pairs(str(path))] == ["B<-A", "A<-B"]


# ============================================================================ protocols
def _constant_field(reference, vector_mm):
    array = np.broadcast_to(np.asarray(vector_mm, dtype=np.float64), sitk.GetArrayViewFromImage(reference).shape + (3,))
    field = sitk.GetImageFromArray(np.ascontiguousarray(array), isVector=True)
    field.CopyInformation(reference)
    return field


def test_protocols_on_an_exact_translation():
    """Moving = fixed shifted by 6 mm (one half-grid voxel) along x; the field +6 mm must give Dice 1 and HD95 0."""
    pair = phantom_pair(size=SIZE, spacing=SPACING, seed=4)
    array = sitk.GetArrayFromImage(pair.moving_labels)  # an unwarped phantom: sharp, simple
    array[:, :, :3] = array[:, :, -3:] = 0  # nothing is shifted in from outside the image
    fixed_labels = sitk.GetImageFromArray(array)
    fixed_labels.CopyInformation(pair.moving_labels)
    moving_labels = sitk.Resample(fixed_labels, fixed_labels, sitk.TranslationTransform(3, (-6.0, 0.0, 0.0)),
                                  sitk.sitkNearestNeighbor, 0)
    field = _constant_field(fixed_labels, (6.0, 0.0, 0.0))
    full = evaluate_field(field, fixed_labels, moving_labels, "full", gt_field=field)
    half = evaluate_field(field, fixed_labels, moving_labels, "half")
    assert full["grid_size"] == list(SIZE) and half["grid_size"] == [30, 26, 22]
    assert half["grid_spacing_mm"] == [6.0, 6.0, 6.0]
    assert full["dice_initial_mean"] < 0.9
    assert full["dice_mean"] == 1.0 and full["hd95_mm_mean"] == 0.0
    assert half["dice_mean"] > 0.97  # nearest-neighbour label downsampling: not exact at the borders
    assert full["folding_percent"] == 0.0 and full["sdlogj"] < 1e-6
    assert full["disp_error_mm_mean"] == pytest.approx(0.0, abs=1e-6)
    assert full["gt_disp_mm_mean"] == pytest.approx(6.0, abs=1e-5)
    zero = _constant_field(fixed_labels, (0.0, 0.0, 0.0))
    unmoved = evaluate_field(zero, fixed_labels, moving_labels, "full", gt_field=field)
    assert unmoved["dice_mean"] == pytest.approx(full["dice_initial_mean"])
    assert unmoved["disp_error_mm_mean"] == pytest.approx(6.0, abs=1e-5)


def test_a_ground_truth_field_that_does_not_cover_the_fixed_image_is_an_error():
    pair = phantom_pair(size=SIZE, spacing=SPACING, seed=4)
    field = _constant_field(pair.fixed_labels, (3.0, 0.0, 0.0))
    for protocol in ("full", "half"):
        with pytest.raises(InputError, match="ground-truth field does not cover the fixed image"):
            evaluate_field(field, pair.fixed_labels, pair.moving_labels, protocol, gt_field=field[:10, :10, :10])


def test_the_mean_row_counts_the_pairs_with_something_to_score():
    rows = [{"pair_id": "a", "method": "m", "protocol": "full", "status": "ok", "dice_mean": 0.5, "sdlogj": 0.1},
            {"pair_id": "b", "method": "m", "protocol": "full", "status": "ok", "dice_mean": None, "sdlogj": 0.3},
            {"pair_id": "c", "method": "m", "protocol": "full", "status": "failed"}]
    mean = report.mean_rows(rows)
    assert (mean["n_pairs"], mean["n_scored"], mean["dice_mean"]) == (2, 1, 0.5)
    assert mean["sdlogj"] == pytest.approx(0.2)


def test_unknown_protocol_is_an_error(serial_run):
    with pytest.raises(InputError, match="unknown evaluation protocol"):
        run_evaluation([PairSpec("x", "a", "b")], [voxelopt_spec(CONFIG)], serial_run[0], protocols=["quarter"])


# ============================================================================ runner and results
def test_results_files_per_pair_and_mean(serial_run):
    out, run = serial_run
    assert run.ran == 2 and run.skipped == 0 and not run.failed
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert [(r["pair_id"], r["protocol"]) for r in rows] == [
        ("pair1", "half"), ("pair2", "half"), ("MEAN", "half"), ("pair1", "full"), ("pair2", "full"), ("MEAN", "full")]
    for protocol in ("half", "full"):
        per_pair = [r for r in rows if r["protocol"] == protocol and r["pair_id"] != "MEAN"]
        mean = next(r for r in rows if r["protocol"] == protocol and r["pair_id"] == "MEAN")
        assert mean["n_pairs"] == "2"
        for key in ("dice_mean", "hd95_mm_mean", "sdlogj", "folding_percent", "time_total_s", "time_solver_s"):
            assert float(mean[key]) == pytest.approx(np.mean([float(r[key]) for r in per_pair]), rel=1e-4)
        for r in per_pair:  # VoxelOpt must improve the phantom pairs' overlap (less visible on the coarse half grid)
            assert float(r["dice_mean"]) > float(r["dice_initial_mean"]) + (0.02 if protocol == "full" else 0.0)
            assert 0 <= float(r["disp_error_mm_mean"]) < float(r["gt_disp_mm_mean"])
            assert float(r["time_total_s"]) >= float(r["time_solver_s"]) > 0
    md = (out / "results.md").read_text()
    assert "## Mean over pairs — half" in md and "## Per pair — full" in md
    assert '"levels": 3' in md and "(voxelopt 0.1.0, 1 thread per pair)" in md
    mean_full = next(r for r in rows if r["protocol"] == "full" and r["pair_id"] == "MEAN")
    summary_full = md.split("## Mean over pairs — full")[1].split("##")[0]
    assert "disp. error mm, whole grid / in the labels" in summary_full  # both errors, the labels' not hidden
    assert (f"| {float(mean_full['disp_error_mm_mean']):.2f} / {float(mean_full['disp_error_mm_labels']):.2f} |"
            in summary_full)
    record = json.loads((out / "records" / "VoxelOpt" / "pair1.json").read_text())
    assert record["status"] == "ok" and set(record["metrics"]) == {"half", "full"}


def test_rerun_resumes_and_changed_settings_recompute(serial_run, data):
    out, first = serial_run
    pairs = read_pairs(str(data["pairs_csv"]))
    again = run_evaluation(pairs, [voxelopt_spec(CONFIG)], out, threads=1, progress=False)
    assert again.ran == 0 and again.skipped == 2
    assert again.records[0]["metrics"] == first.records[0]["metrics"]
    changed = run_evaluation(pairs[:1], [voxelopt_spec(CONFIG.replace(alpha=2.0))], out / "changed", threads=1, progress=False)
    assert changed.ran == 1


def test_an_input_replaced_under_the_same_name_runs_again(serial_run, data, tmp_path):
    """A stored record is reused for the same files with the same contents only: the fixed image
    and labels copied over the moving files (same names) must be registered again."""
    out, first = serial_run
    pairs = read_pairs(str(data["pairs_csv"]))
    copies = {}
    for name in ("fixed", "moving", "fixed_labels", "moving_labels", "gt_field"):
        copies[name] = tmp_path / Path(getattr(pairs[0], name)).name
        shutil.copyfile(getattr(pairs[0], name), copies[name])
    pair = PairSpec("pair1", *(str(copies[n]) for n in ("fixed", "moving", "fixed_labels", "moving_labels", "gt_field")))
    results = tmp_path / "results"
    assert run_evaluation([pair], [voxelopt_spec(CONFIG)], results, threads=1, progress=False).ran == 1
    assert run_evaluation([pair], [voxelopt_spec(CONFIG)], results, threads=1, progress=False).ran == 0
    shutil.copyfile(copies["fixed"], copies["moving"])
    shutil.copyfile(copies["fixed_labels"], copies["moving_labels"])
    again = run_evaluation([pair], [voxelopt_spec(CONFIG)], results, threads=1, progress=False)
    assert again.ran == 1 and again.skipped == 0
    assert first.records[0]["metrics"]["full"]["dice_initial_mean"] < 0.9
    assert again.records[0]["metrics"]["full"]["dice_initial_mean"] == pytest.approx(1.0)


def test_a_failing_pair_is_reported_and_the_rest_run(data, tmp_path):
    broken = tmp_path / "broken.nii.gz"
    broken.write_bytes(gzip.compress(b"not an image"))
    good = read_pairs(str(data["pairs_csv"]))[0]
    bad = PairSpec("bad", good.fixed, str(broken), good.fixed_labels, good.moving_labels)
    run = run_evaluation([bad, good], [voxelopt_spec(CONFIG)], tmp_path / "out", threads=1, progress=False)
    assert [r["status"] for r in run.records] == ["failed", "ok"]
    assert "moving image" in run.failed[0]["error"]
    md = (tmp_path / "out" / "results.md").read_text()
    assert "## Failed pairs" in md and "bad / VoxelOpt" in md
    rows = list(csv.DictReader((tmp_path / "out" / "results.csv").open()))
    mean = next(r for r in rows if r["pair_id"] == "MEAN" and r["protocol"] == "half")
    assert mean["n_pairs"] == "1"
    # Failed jobs are retried on the next run, finished ones are not.
    again = run_evaluation([bad, good], [voxelopt_spec(CONFIG)], tmp_path / "out", threads=1, progress=False)
    assert again.ran == 1 and again.skipped == 1


def test_quiet_still_names_the_failed_pairs(data, tmp_path, capsys):
    broken = tmp_path / "broken.nii.gz"
    broken.write_bytes(gzip.compress(b"not an image"))
    good = read_pairs(str(data["pairs_csv"]))[0]
    csv_path = tmp_path / "pairs.csv"
    csv_path.write_text(f"id,fixed,moving,fixed_labels,moving_labels\nbad,{good.fixed},{broken},{good.fixed_labels},"
                        f"{good.moving_labels}\n", encoding="utf-8")
    code = main(["dataset", str(csv_path), "--out-dir", str(tmp_path / "out"), "--quiet", "--threads", "1"])
    captured = capsys.readouterr()
    assert code == 1 and captured.out == ""
    assert "FAILED bad / VoxelOpt: InputError: cannot read moving image" in captured.err


def test_a_label_map_off_its_image_fails_its_pair_before_any_registration(data, tmp_path, monkeypatch):
    """register's label checks apply to every pair: moving labels whose header puts them off
    their image fail the pair with register's message (they used to be scored as Dice 0),
    before a method runs."""
    good = read_pairs(str(data["pairs_csv"]))[0]
    far = sitk.ReadImage(good.moving_labels)
    far.SetOrigin((1000.0, 1000.0, 1000.0))
    far_path = _write(far, tmp_path / "far_labels.nii.gz")
    ran = count_calls(monkeypatch, runner, "run_method")
    bad = PairSpec("far", good.fixed, good.moving, good.fixed_labels, str(far_path))
    run = run_evaluation([bad], [voxelopt_spec(CONFIG)], tmp_path / "out", threads=1, progress=False)
    assert [r["status"] for r in run.records] == ["failed"] and not ran
    assert "moving labels do not overlap their image" in run.failed[0]["error"]
    # and register's checks of the images themselves: a 2-D moving image fails with its message
    flat = _write(sitk.ReadImage(good.moving)[:, :, 0], tmp_path / "flat.nii.gz")
    run = run_evaluation([PairSpec("flat", good.fixed, str(flat), good.fixed_labels, good.moving_labels)],
                         [voxelopt_spec(CONFIG)], tmp_path / "out2", threads=1, progress=False)
    assert [r["status"] for r in run.records] == ["failed"] and not ran
    assert "moving image must be a 3-D image, got 2-D" in run.failed[0]["error"]


def test_parallel_backends_give_the_serial_results(serial_run, data, tmp_path):
    _, serial = serial_run
    pairs = read_pairs(str(data["pairs_csv"]))

    def metrics(run):
        return [r["metrics"] for r in run.records]

    pool = run_evaluation(pairs, [voxelopt_spec(CONFIG)], tmp_path / "pool", workers=2, threads=1, progress=False)
    assert pool.ran == 2 and metrics(pool) == metrics(serial)
    distributed = pytest.importorskip("distributed", reason="dask.distributed not installed (the 'dask' extra)")
    with distributed.LocalCluster(n_workers=1, threads_per_worker=2, processes=False, dashboard_address=None) as cluster:
        dask_run = run_evaluation(pairs, [voxelopt_spec(CONFIG)], tmp_path / "dask", scheduler=cluster.scheduler_address,
                                  threads=1, progress=False)
    assert dask_run.ran == 2 and metrics(dask_run) == metrics(serial)


def test_unreachable_scheduler_is_a_clear_error(data, tmp_path, monkeypatch):
    pytest.importorskip("distributed", reason="dask.distributed not installed (the 'dask' extra)")
    monkeypatch.setattr(runner, "DASK_CONNECT_TIMEOUT", "1s")
    with pytest.raises(ConfigError, match="cannot connect to the Dask scheduler"):
        run_evaluation(read_pairs(str(data["pairs_csv"]))[:1], [voxelopt_spec(CONFIG)], tmp_path,
                       scheduler="tcp://127.0.0.1:1", progress=False)


# ============================================================================ ablation
def test_ablation_variants_change_one_factor_each():
    names = [(m.name, m.settings["features"], m.settings["k"], m.settings["adaptive"], m.settings["filter_cost"])
             for m in ablation_variants(CONFIG)]
    assert names == [("base", "mind", 1, True, True), ("features=raw", "raw", 1, True, True),
                     ("k=2", "mind", 2, True, True), ("adaptive=off", "mind", 1, False, True),
                     ("filter_cost=off", "mind", 1, True, False)]
    with pytest.raises(ConfigError, match="k"):
        ablation_variants(CONFIG, ks=(0,))


def test_ablation_table(data, tmp_path):
    pairs = read_pairs(str(data["pairs_csv"]))[:1]
    run, paths = run_ablation(pairs, str(tmp_path), CONFIG, features=("raw", "mind"), ks=(1, 2), threads=1, progress=False)
    rows = list(csv.DictReader(paths["ablation_csv"].open()))
    assert [r["variant"] for r in rows] == ["base", "features=raw", "k=2", "adaptive=off", "filter_cost=off"]
    assert all(r["n_pairs"] == "1" for r in rows)
    dice = {r["variant"]: float(r["dice_mean"]) for r in rows}
    assert len(set(dice.values())) > 1  # the factors change the result
    base = json.loads((tmp_path / "records" / "base" / "pair1.json").read_text())
    assert dice["base"] == pytest.approx(base["metrics"]["half"]["dice_mean"], rel=1e-5)
    assert "| k=2 | mind | 2 | on | on | 1/1 |" in paths["ablation_md"].read_text()


# ============================================================================ CLI
def test_cli_evaluate_dataset(data, tmp_path, capsys):
    code = main(["dataset", str(data["subjects_csv"]), "--out-dir", str(tmp_path), "--max-pairs", "1",
                 "--protocol", "full", "--levels", "3", "--feature-spacing", "none", "--device", "cpu", "--quiet"])
    assert code == 0
    rows = list(csv.DictReader((tmp_path / "results.csv").open()))
    assert [(r["pair_id"], r["protocol"]) for r in rows] == [("S1<-S0", "full"), ("MEAN", "full")]
    report = (tmp_path / "results.md").read_text()  # the default's own affine stage, from the common com start
    assert "Initial alignment: com" in report and "- VoxelOpt: its own affine stage (init 'affine')" in report


def test_cli_output_folders_that_cannot_take_the_results_are_refused_before_any_pair(data, tmp_path, capsys):
    """A pairs CSV kept as OUT_DIR/results.csv would be replaced by the results; an output folder
    that is a file, or a file where the records go, would fail after the pairs ran."""
    out = tmp_path / "out"
    out.mkdir()
    pairs_csv = out / "results.csv"
    pairs_csv.write_text(data["subjects_csv"].read_text().replace("data/", str(data["root"] / "data") + "/"))
    before = pairs_csv.read_text()
    options = ["--max-pairs", "1", "--protocol", "full", "--levels", "3", "--feature-spacing", "none", "--device", "cpu",
               "--quiet"]
    for command in ("dataset", "ablation"):
        code = main([command, str(pairs_csv), "--out-dir", str(out), *options])
        err = capsys.readouterr().err
        assert code == 2 and "is one of this run's inputs" in err and "Traceback" not in err, err
    assert pairs_csv.read_text() == before and sorted(p.name for p in out.iterdir()) == ["results.csv"]
    (tmp_path / "a_file").write_text("")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "records").write_text("")
    for folder, message in ((tmp_path / "a_file", "exists and is not a directory"),
                            (tmp_path / "other", "records is a file, where the per-pair records go")):
        code = main(["dataset", str(data["subjects_csv"]), "--out-dir", str(folder), *options])
        err = capsys.readouterr().err
        assert code == 2 and message in err and "Traceback" not in err, err


@pytest.mark.skipif(importlib.util.find_spec("torch") is None or __import__("torch").cuda.is_available(),
                    reason="needs a machine without CUDA")
def test_cli_a_device_this_machine_lacks_is_refused_before_any_pair(data, tmp_path, capsys):
    code = main(["dataset", str(data["subjects_csv"]), "--out-dir", str(tmp_path / "out"), "--device", "cuda",
                 "--quiet"])
    assert code == 2 and "CUDA is not available" in capsys.readouterr().err and not (tmp_path / "out").exists()


def test_the_common_start_of_an_affine_run_is_the_centres_of_mass():
    import argparse

    from voxelopt.cli import add_registration_options
    from voxelopt_eval.cli import _split_init

    parser = argparse.ArgumentParser()
    add_registration_options(parser)
    config, init = _split_init(parser.parse_args(["--init", "affine"]))
    assert config.init == "affine" and init.mode == "com"  # every method from the com; VoxelOpt adds its affine stage
    config, init = _split_init(parser.parse_args(["--init", "centers"]))
    assert config.init == "none" and init.mode == "centers"  # a translation is applied once, for every method
    with pytest.raises(ConfigError, match="unknown initial alignment 'affine'"):
        InitialAlignment("affine")


def test_cli_unknown_peer_is_an_error(data, tmp_path, capsys):
    code = main(["dataset", str(data["pairs_csv"]), "--out-dir", str(tmp_path), "--peers", "deeds"])
    assert code == 2
    assert "unknown peer(s) deeds" in capsys.readouterr().err


def test_cli_a_peer_not_installed_is_refused_before_any_pair_runs(data, tmp_path, capsys):
    register_peer(Peer("absent", "Absent", "no-such-package", "voxelopt_no_such_module", "register", {"threads": 0},
                       lambda settings, fixed, moving: None))
    try:
        out = tmp_path / "out"
        code = main(["dataset", str(data["pairs_csv"]), "--out-dir", str(out), "--peers", "absent"])
    finally:
        del PEERS["absent"]
    assert code == 2
    error = capsys.readouterr().err
    assert "absent is not usable (ModuleNotFoundError" in error and "install the 'peers' extra" in error
    assert not out.exists()  # nothing ran, VoxelOpt included


@pytest.mark.parametrize("threads", ["0", "-1", "100000"])
def test_cli_threads_per_pair_out_of_range_are_refused_before_any_work(threads, data, tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["dataset", str(data["pairs_csv"]), "--out-dir", str(out), "--threads", threads])
    assert code == 2
    assert f"threads per pair must be an integer from 1 to {4 * (os.cpu_count() or 1)}" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize("options, message", [
    (["--no-voxelopt", "--peer-pairs", "0"], "--no-voxelopt leaves only the peers, and --peer-pairs 0 runs them on no pair"),
    (["--peer-pairs", "-1"], "--peer-pairs must be >= 0, got -1"),
])
def test_cli_peer_pairs_that_leave_nothing_to_run_are_a_clear_error(options, message, recorder, data, tmp_path, capsys):
    code = main(["dataset", str(data["pairs_csv"]), "--out-dir", str(tmp_path), "--peers", "recorder", *options])
    assert code == 2
    error = capsys.readouterr().err
    assert message in error and "no pairs to evaluate" not in error
    assert not recorder


def test_cli_peer_pairs_0_runs_voxelopt_alone(recorder, data, tmp_path):
    code = main(["dataset", str(data["pairs_csv"]), "--out-dir", str(tmp_path), "--peers", "recorder", "--peer-pairs", "0",
                 "--max-pairs", "1", "--protocol", "full", "--levels", "3", "--feature-spacing", "none", "--device", "cpu",
                 "--quiet"])
    assert code == 0
    assert not recorder and not (tmp_path / "with_peers").exists()
    assert [r["method"] for r in csv.DictReader((tmp_path / "results.csv").open())] == ["VoxelOpt", "VoxelOpt"]


# ============================================================================ a fair harness
def test_the_engine_does_not_import_the_harness():
    code = ("import sys, voxelopt, voxelopt.cli, voxelopt.evaluation, voxelopt.pipeline; "
            "sys.exit(any(m.split('.')[0] == 'voxelopt_eval' for m in sys.modules))")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


@pytest.fixture()
def recorder():
    """A peer registered through the registry that records what it receives and returns a zero field."""
    received = []

    def run(settings, fixed, moving):
        received.append((sitk.GetArrayFromImage(fixed), sitk.GetArrayFromImage(moving)))
        zero = sitk.Image(fixed.GetSize(), sitk.sitkVectorFloat64, 3)
        zero.CopyInformation(fixed)
        return MethodOutput(zero, {"registration": 0.0})

    register_peer(Peer("recorder", "Recorder", "numpy", "numpy", "asarray", {"threads": 0}, run))
    yield received
    del PEERS["recorder"]


@pytest.fixture(scope="module")
def misplaced_pair(tmp_path_factory):
    """A phantom and the same image and labels with their origin moved 30 mm along x (a placeholder
    header): the true field is the constant (30, 0, 0) mm."""
    root = tmp_path_factory.mktemp("misplaced")
    pair = phantom_pair(size=SIZE, spacing=SPACING, seed=3)
    files = {}
    for name, image in (("fixed", pair.moving), ("fixed_labels", pair.moving_labels)):
        files[name] = str(_write(image, root / f"{name}.nii.gz"))
        moved = sitk.Image(image)
        moved.SetOrigin(tuple(o + d for o, d in zip(image.GetOrigin(), (30.0, 0.0, 0.0))))
        files[name.replace("fixed", "moving")] = str(_write(moved, root / f"{name.replace('fixed', 'moving')}.nii.gz"))
    truth = str(_write(_constant_field(pair.moving, (30.0, 0.0, 0.0)), root / "truth.nii.gz"))
    return PairSpec("misplaced", files["fixed"], files["moving"], files["fixed_labels"], files["moving_labels"], truth)


def test_peers_receive_the_moving_image_in_the_common_initial_alignment(recorder, misplaced_pair, tmp_path):
    methods = [peer_spec("recorder")]
    aligned = run_evaluation([misplaced_pair], methods, tmp_path / "com", ("full",), threads=1, progress=False,
                             init=InitialAlignment("com"))
    fixed, moving = recorder[-1]
    assert np.abs(moving - fixed).max() < 1e-5  # the centre-of-mass shift undoes the header offset exactly
    record = aligned.records[0]
    assert record["initial_translation_mm"] == pytest.approx([30.0, 0.0, 0.0], abs=1e-6)
    metrics = record["metrics"]["full"]  # scored against the equally aligned moving labels
    assert metrics["dice_initial_mean"] == 1.0 and metrics["dice_mean"] == 1.0
    assert metrics["disp_error_mm_mean"] == pytest.approx(0.0, abs=1e-6)  # the truth, relative to the alignment
    assert "Initial alignment: com" in (tmp_path / "com" / "results.md").read_text()

    unaligned = run_evaluation([misplaced_pair], methods, tmp_path / "none", ("full",), threads=1, progress=False)
    fixed, moving = recorder[-1]
    assert np.abs(moving - fixed).mean() > 0.05
    assert unaligned.records[0]["metrics"]["full"]["dice_initial_mean"] < 0.8
    assert unaligned.records[0]["metrics"]["full"]["disp_error_mm_mean"] == pytest.approx(30.0, abs=1e-4)
    assert "Initial alignment: none" in (tmp_path / "none" / "results.md").read_text()


def test_voxelopt_and_the_peers_start_from_the_same_alignment(recorder, misplaced_pair, tmp_path):
    run = run_evaluation([misplaced_pair], [voxelopt_spec(CONFIG), peer_spec("recorder")], tmp_path, ("full",),
                         threads=1, progress=False, init=InitialAlignment("com"))
    voxelopt_record, peer_record = run.records
    assert voxelopt_record["initial_translation_mm"] == peer_record["initial_translation_mm"]
    assert voxelopt_record["metrics"]["full"]["dice_initial_mean"] == peer_record["metrics"]["full"]["dice_initial_mean"]
    assert voxelopt_record["metrics"]["full"]["dice_mean"] > 0.9  # from the aligned start, nothing to recover
    with pytest.raises(ConfigError, match="give the initial alignment to the run"):
        run_evaluation([misplaced_pair], [voxelopt_spec(CONFIG.replace(init="com"))], tmp_path, progress=False)


def test_cli_init_is_applied_to_every_method(recorder, misplaced_pair, tmp_path):
    csv_path = tmp_path / "pair.csv"
    csv_path.write_text("id,fixed,moving,fixed_labels,moving_labels\nmisplaced," + ",".join(
        [misplaced_pair.fixed, misplaced_pair.moving, misplaced_pair.fixed_labels, misplaced_pair.moving_labels]) + "\n")
    code = main(["dataset", str(csv_path), "--out-dir", str(tmp_path / "out"), "--no-voxelopt", "--peers", "recorder",
                 "--protocol", "full", "--init", "com", "--quiet"])
    assert code == 0
    fixed, moving = recorder[-1]
    assert np.abs(moving - fixed).max() < 1e-5


@pytest.fixture()
def slow_package_peer(tmp_path, monkeypatch):
    """A peer whose package takes 1 s to import, and 1 s more to load the attribute its run uses
    on first access (as itk loads its modules lazily); the run itself takes no time."""
    (tmp_path / "slow_peer_package.py").write_text(
        "import time\n"
        "time.sleep(1.0)\n"
        "def register():\n"
        "    return 0.0\n"
        "def __getattr__(name):  # PEP 562: loaded on first access\n"
        "    if name != 'lazy_part':\n"
        "        raise AttributeError(name)\n"
        "    time.sleep(1.0)\n"
        "    globals()['lazy_part'] = 'loaded'\n"
        "    return 'loaded'\n")
    monkeypatch.syspath_prepend(str(tmp_path))

    def run(settings, fixed, moving):
        import slow_peer_package

        assert slow_peer_package.lazy_part == "loaded"
        zero = sitk.Image(fixed.GetSize(), sitk.sitkVectorFloat64, 3)
        zero.CopyInformation(fixed)
        return MethodOutput(zero, {"registration": slow_peer_package.register()})

    register_peer(Peer("slow", "Slow", "numpy", "slow_peer_package", "register", {"threads": 0}, run,
                       lazy=("lazy_part",)))
    yield
    del PEERS["slow"]
    sys.modules.pop("slow_peer_package", None)


def test_times_exclude_importing_the_method_package(slow_package_peer, misplaced_pair):
    record = run_job(Job(misplaced_pair, peer_spec("slow"), ("full",), 1))
    assert record["status"] == "ok", record.get("error")
    assert record["time_total_s"] < 0.7  # neither the 1 s import nor the 1 s lazy load is timed
    assert sum(record["timings"].values()) == pytest.approx(record["time_total_s"], abs=0.05)


def test_loading_voxelopt_before_the_clock_loads_its_compiled_kernels(monkeypatch):
    """The engine's compiled kernels (loaded once per process, about 0.4 s, on grids from 12 M
    voxels) are loaded with its modules before a VoxelOpt job is timed, where they can run."""
    from voxelopt import compiled

    monkeypatch.setattr(compiled, "_kernels", None)
    method_registry.load_voxelopt()
    assert bool(compiled._kernels) == compiled.enabled()
    monkeypatch.setenv("VOXELOPT_COMPILED", "0")
    monkeypatch.setattr(compiled, "_kernels", None)
    method_registry.load_voxelopt()
    assert compiled._kernels is None  # turned off: not loaded


def test_results_md_reports_the_threads_each_method_used(recorder, misplaced_pair, tmp_path):
    own = MethodSpec("Recorder 3", "recorder", {**peer_spec("recorder").settings, "threads": 3})
    run_evaluation([misplaced_pair], [peer_spec("recorder"), own], tmp_path, ("full",), threads=1, progress=False)
    methods = (tmp_path / "results.md").read_text().split("## Methods")[1]
    lines = {line.split("**")[1]: line for line in methods.splitlines() if line.startswith("- **")}
    assert "1 thread per pair)" in lines["Recorder"]  # the run's count: the peer's threads setting is 0
    assert "3 threads per pair)" in lines["Recorder 3"]  # its own setting
    assert '"threads"' not in methods


def test_results_md_says_what_each_method_does_from_the_common_start():
    methods = [voxelopt_spec(CONFIG.replace(init="affine")), voxelopt_spec(CONFIG, "VoxelOpt none"),
               peer_spec("convexadam"), peer_spec("ants"), peer_spec("elastix")]
    text = report.markdown([], methods, ("full",), "Evaluation", InitialAlignment("com"))
    assert "Initial alignment: com" in text
    for line in ["- VoxelOpt: its own affine stage (init 'affine'), then its deformable registration.",
                 "- VoxelOpt none: its deformable registration only (no affine stage: init 'none').",
                 "- ConvexAdam: deformable registration only, no affine stage",
                 "- ANTs SyN: antspyx preset 'SyN': its own centre-of-mass start and affine stage, then SyN",
                 "- elastix B-spline: its own affine stage (map 'affine'), then a B-spline deformable stage (map 'bspline')."]:
        assert "\n" + line in text


# ============================================================================ benchmarks/evaluate_development_data.py
BENCHMARKS = Path(__file__).resolve().parents[1] / "VoxelOptLib" / "benchmarks"


@pytest.fixture()
def development_script(monkeypatch):
    """The script as a module, with its voxelopt-eval commands and pseudo-CT builds recorded, not run."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    script = importlib.import_module("evaluate_development_data")
    calls = {"commands": [], "pseudoct": []}

    def make_pseudoct(shared, out_dir, label_files, quiet=True):
        calls["pseudoct"].append(label_files)
        return [(Path(out_dir) / f"case{i:04d}_img.nii.gz", Path(out_dir) / f"case{i:04d}_lab.nii.gz")
                for i in range(len(label_files))]

    monkeypatch.setattr(script, "voxelopt_eval", lambda *args: calls["commands"].append(args) or 0)
    monkeypatch.setattr(script, "make_pseudoct", make_pseudoct)
    monkeypatch.setattr(script, "get_peer", _peers_usable_except(()))  # as if installed
    return script, calls


def _peers_usable_except(missing):
    return lambda kind: SimpleNamespace(available=lambda: (kind not in missing, f"{kind} is not usable (not installed)"))


@pytest.fixture()
def fake_shared(tmp_path):
    """../shared's layout with empty files: the script checks that they exist before it runs."""
    shared = tmp_path / "shared"
    names = [f"data/totalseg_ct/{case}_{kind}.nii.gz" for case in ("A", "B", "Adef") for kind in ("img", "lab")]
    names += ["data/totalseg_ct/Adef_gt_disp_mm.nii.gz", "tools/make_pseudoct.py"]
    names += [f"data/btcv_labels/label{n:04d}.nii.gz" for n in range(27, 34)]
    for name in names:
        (shared / name).parent.mkdir(parents=True, exist_ok=True)
        (shared / name).write_text("")
    return shared


def test_development_script_refuses_a_peer_not_usable_here_before_any_work(development_script, fake_shared, tmp_path,
                                                                           capsys, monkeypatch):
    script, calls = development_script
    monkeypatch.setattr(script, "get_peer", _peers_usable_except({"elastix"}))
    with pytest.raises(SystemExit):
        script.main([str(tmp_path / "work"), "--shared", str(fake_shared), "--skip", "pseudoct,ablation"])
    assert "elastix is not usable" in capsys.readouterr().err
    assert calls["commands"] == [] and not (tmp_path / "work").exists()


def test_development_script_real_ct_has_both_pairs_and_makes_no_pseudoct(development_script, fake_shared, tmp_path):
    script, calls = development_script
    work = tmp_path / "work"
    assert script.main([str(work), "--shared", str(fake_shared), "--skip", "pseudoct,ablation", "--peers", "ants"]) == 0
    assert calls["pseudoct"] == []  # not needed by the real-CT step
    assert calls["commands"] == [("dataset", str(work / "real_ct_pairs.csv"), "--out-dir", str(work / "results_real_ct"),
                                  "--peers", "ants", "--threads", "2", "--device", "cpu")]
    pairs = read_pairs(str(work / "real_ct_pairs.csv"))
    real = fake_shared / "data" / "totalseg_ct"
    assert [(p.pair_id, p.fixed, p.moving, p.fixed_labels, p.moving_labels, p.gt_field) for p in pairs] == [
        ("B<-A", str(real / "B_img.nii.gz"), str(real / "A_img.nii.gz"), str(real / "B_lab.nii.gz"),
         str(real / "A_lab.nii.gz"), None),
        ("Adef<-A", str(real / "Adef_img.nii.gz"), str(real / "A_img.nii.gz"), str(real / "Adef_lab.nii.gz"),
         str(real / "A_lab.nii.gz"), str(real / "Adef_gt_disp_mm.nii.gz"))]


def test_development_script_makes_the_pseudoct_for_the_ablation(development_script, fake_shared, tmp_path):
    script, calls = development_script
    assert script.main([str(tmp_path / "work"), "--shared", str(fake_shared), "--skip", "real,pseudoct"]) == 0
    assert len(calls["pseudoct"]) == 1 and [c[0] for c in calls["commands"]] == ["ablation"]


@pytest.mark.parametrize("options, message", [
    (["--init", "affin"], "argument --init: invalid choice: 'affin'"),
    (["--preset", "quick"], "argument --preset: invalid choice: 'quick'"),
    (["--peers", "deeds"], "unknown peer(s) deeds"),
    (["--skip", "reel"], "unknown step in --skip: ['reel']"),
    (["--skip", "real,pseudoct,ablation"], "skips every step (real, pseudoct, ablation): nothing to do"),
    (["--peer-pairs", "-1"], "--peer-pairs must be >= 0, got -1"),
    (["--threads", "0"], "--threads must be >= 1, got 0"),
    (["--skip", "pseudoct,ablation", "--preset", "accurate"], "needed by step(s) real: "),  # no models/ for its network
])
def test_development_script_checks_its_options_before_any_work(options, message, development_script, fake_shared,
                                                               tmp_path, capsys):
    script, calls = development_script
    work = tmp_path / "work"
    with pytest.raises(SystemExit) as stopped:
        script.main([str(work), "--shared", str(fake_shared), *options])
    assert stopped.value.code == 2
    assert message in capsys.readouterr().err
    assert not work.exists() and calls == {"commands": [], "pseudoct": []}


# ============================================================================ peers
def _skip_unless(kind):
    ok, reason = get_peer(kind).available()
    if not ok:
        pytest.skip(reason)


@pytest.fixture(scope="module")
def shifted():
    """A phantom and it shifted by +8 mm along x: the answer is the constant field (8, 0, 0) mm."""
    pair = phantom_pair(size=SIZE, spacing=SPACING, seed=6)
    fixed, labels = pair.moving, pair.moving_labels
    shift = sitk.TranslationTransform(3, (-8.0, 0.0, 0.0))
    moving = sitk.Resample(fixed, fixed, shift, sitk.sitkLinear, -1000.0)
    moving_labels = sitk.Resample(labels, labels, shift, sitk.sitkNearestNeighbor, 0)
    return fixed, moving, labels, moving_labels


def _centre_mean(field):
    a = sitk.GetArrayFromImage(field)
    return a[10:-10, 10:-10, 10:-10].reshape(-1, 3).mean(axis=0)


@pytest.mark.parametrize("kind, overrides", [
    ("ants", {"type_of_transform": "Translation"}),  # SyN: test_ants_field_matches_ants_own_label_warp
    ("elastix", {"parameter_maps": ["translation"], "maximum_iterations": 30}),
])
def test_peer_recovers_a_known_shift_in_our_convention(kind, overrides, shifted):
    _skip_unless(kind)
    fixed, moving, labels, moving_labels = shifted
    spec = peer_spec(kind, threads=2, **overrides)
    output = run_method(spec, fixed, moving)
    mean = _centre_mean(output.field)
    assert mean[0] == pytest.approx(8.0, abs=2.0), f"{kind} field mean {mean} (expected +8 mm along x)"
    assert abs(mean[1]) < 2.0 and abs(mean[2]) < 2.0
    metrics = evaluate_field(output.field, labels, moving_labels, "full")
    assert metrics["dice_mean"] > metrics["dice_initial_mean"] + 0.05


def test_convexadam_field_approaches_the_true_field(data):
    """ConvexAdam (package defaults) on a phantom pair with a known smooth warp, scored by our code."""
    _skip_unless("convexadam")
    pair = read_pairs(str(data["pairs_csv"]))[0]
    record = run_job(Job(pair, peer_spec("convexadam", threads=2), ("full",), 2))
    assert record["status"] == "ok", record.get("error")
    metrics = record["metrics"]["full"]
    # A wrong axis order or sign would make the error exceed the true displacement itself.
    assert metrics["disp_error_mm_mean"] < 0.7 * metrics["gt_disp_mm_mean"]
    assert metrics["dice_mean"] > metrics["dice_initial_mean"] + 0.02


def test_ants_field_matches_ants_own_label_warp(shifted, tmp_path):
    _skip_unless("ants")
    import ants

    from voxelopt.geometry import Grid
    from voxelopt_eval.peers import prepare, transforms_to_field

    fixed, moving, labels, moving_labels = shifted
    f, m = prepare(fixed, moving, (-800.0, 500.0))
    for name, image in (("f", f), ("m", m), ("ml", sitk.Cast(moving_labels, sitk.sitkFloat32))):
        sitk.WriteImage(image, str(tmp_path / f"{name}.nii.gz"))
    fa, ma, la = (ants.image_read(str(tmp_path / f"{n}.nii.gz")) for n in ("f", "m", "ml"))
    reg = ants.registration(fixed=fa, moving=ma, type_of_transform="SyN", random_seed=1, outprefix=str(tmp_path / "r_"))
    theirs = ants.apply_transforms(fa, la, reg["fwdtransforms"], interpolator="genericLabel").numpy()
    field = transforms_to_field(reg["fwdtransforms"], Grid.from_image(fixed))
    ours = sitk.Resample(sitk.Cast(moving_labels, sitk.sitkFloat32), fixed, sitk.DisplacementFieldTransform(field),
                         sitk.sitkNearestNeighbor, 0)
    ours = sitk.GetArrayFromImage(ours).transpose(2, 1, 0)  # ants arrays are (x, y, z)
    assert np.mean(ours == theirs) > 0.99  # nearest vs genericLabel differ at a few boundary voxels


def test_job_records_peer_settings_and_version(data):
    _skip_unless("ants")
    pair = read_pairs(str(data["pairs_csv"]))[0]
    record = run_job(Job(pair, peer_spec("ants", threads=1), ("full",), 1))
    assert record["status"] == "ok", record.get("error")
    assert record["version"] not in ("", "not installed")
    assert record["settings"]["type_of_transform"] == "SyN"
    assert record["metrics"]["full"]["dice_mean"] > record["metrics"]["full"]["dice_initial_mean"]
