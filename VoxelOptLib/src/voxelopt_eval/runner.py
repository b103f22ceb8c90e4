"""Run every (pair, method) job, serially, in a process pool or on a Dask cluster.

A *job* aligns the moving image with the run's common initial alignment (:mod:`.alignment`),
registers one pair with one method and evaluates the field under every requested
protocol; it never raises: a failure becomes a record with ``status == "failed"`` and the error
message, so one bad pair does not stop the others. Each finished job is stored at once as
``OUT_DIR/records/<method>/<pair>.json``; a re-run skips jobs whose stored record finished
with the same settings, protocols and inputs (failed jobs are retried). ``results.csv`` and
``results.md`` are then written from the records of the requested pairs and methods.

Times: ``time_total_s`` is the wall-clock time of one job from reading the input images to the
method's displacement field on the fixed grid: reading the images, the common initial alignment,
the method's preprocessing, registration and conversion of its output to a displacement field.
It excludes importing the method's package (and what it loads lazily, such as itk's modules):
:func:`load_method` does that before the clock starts, once per process (worker), so the first
pair of a worker is timed like the others. Reading and checking the labels (``register``'s
checks, before the method runs) and computing the metrics are excluded too. ``timings`` holds
``load`` (reading the images), ``align`` (the initial alignment) and the method's own stages.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import multiprocessing
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import SimpleITK as sitk

from voxelopt.errors import ConfigError, InputError
from voxelopt.inputs import checked_image, checked_labels
from voxelopt.io import json_safe
from voxelopt.output_dir import check_output_dir, check_output_targets

from .alignment import COMMON_MODES, InitialAlignment, relative_to_alignment, shifted
from .methods import VOXELOPT, MethodOutput, MethodSpec, load_voxelopt, run_voxelopt, voxelopt_stages, voxelopt_version
from .pairs import PairSpec, safe_name
from .peers import get_peer, run_peer
from .protocols import check_protocols, evaluate_field

RECORD_VERSION = 2
#: How long to wait for a Dask scheduler to answer.
DASK_CONNECT_TIMEOUT = "20s"


def run_method(spec: MethodSpec, fixed: sitk.Image, moving: sitk.Image) -> MethodOutput:
    """Register ``moving`` onto ``fixed`` (already in the common initial alignment) with ``spec``."""
    if spec.kind == VOXELOPT:
        return run_voxelopt(spec.settings, fixed, moving)
    return run_peer(spec, fixed, moving)


def method_version(kind: str) -> str:
    """Version of the package that implements ``kind`` ("not installed" when absent)."""
    return voxelopt_version() if kind == VOXELOPT else get_peer(kind).version()


def method_stages(spec: MethodSpec) -> str:
    """What the method of ``spec`` does from the common initial alignment (a phrase for results.md)."""
    return voxelopt_stages(spec.settings) if spec.kind == VOXELOPT else get_peer(spec.kind).describe_stages(spec.settings)


def load_method(kind: str) -> None:
    """Import the package of method ``kind`` and what it loads lazily on first use, so that a run
    timed afterwards measures the method's work only. Instant once done in a process.

    Raises:
        ConfigError: a peer whose package is not usable here.
    """
    if kind == VOXELOPT:
        load_voxelopt()
        return
    usable, reason = get_peer(kind).available()  # imports it
    if not usable:
        raise ConfigError(reason)


@dataclasses.dataclass
class Job:
    """One registration: ``pair`` with ``method`` from the initial alignment ``init``, scored
    under ``protocols``.

    ``threads`` (> 0) bounds torch's and ITK's threads in the worker; 0 leaves the defaults.
    """

    pair: PairSpec
    method: MethodSpec
    protocols: Tuple[str, ...]
    threads: int = 0
    init: InitialAlignment = InitialAlignment()

    def key(self) -> Dict[str, Any]:
        """What must match for a stored record to count as this job finished: the pair's paths
        and their contents (a file replaced under the same name runs again), the method, the
        protocols, the initial alignment and the record format."""
        return {"pair": dataclasses.asdict(self.pair), "contents": self.pair.content_digests(),
                "method": dataclasses.asdict(self.method), "protocols": list(self.protocols),
                "init": dataclasses.asdict(self.init), "record_version": RECORD_VERSION}


@dataclasses.dataclass
class EvaluationRun:
    """The outcome of :func:`run_evaluation`.

    Attributes:
        records: one record per (pair, method) in pair-major order (stored or new).
        skipped: jobs taken from earlier runs (resumed).
        ran: jobs computed in this call.
        failed: records with ``status == "failed"``.
        paths: the written files (``results_csv``, ``results_md``).
    """

    records: List[Dict[str, Any]]
    skipped: int
    ran: int
    failed: List[Dict[str, Any]]
    paths: Dict[str, Path]


def run_job(job: Job) -> Dict[str, Any]:
    """Load, align, register and evaluate one pair; returns a JSON-ready record (never raises)."""
    from voxelopt.io import read_field, read_image

    record: Dict[str, Any] = {"key": job.key(), "pair_id": job.pair.pair_id, "method": job.method.name,
                              "kind": job.method.kind, "settings": job.method.settings,
                              "version": method_version(job.method.kind), "threads": job.threads}
    _limit_threads(job.threads)
    try:
        load_method(job.method.kind)  # before the clock: the times exclude importing the method's package
        fixed_labels = read_image(job.pair.fixed_labels, "fixed labels") if job.pair.fixed_labels else None
        moving_labels = read_image(job.pair.moving_labels, "moving labels") if job.pair.moving_labels else None
        start = time.perf_counter()
        fixed = read_image(job.pair.fixed, "fixed image")
        moving = read_image(job.pair.moving, "moving image")
        loaded = time.perf_counter()
        # register's checks of the images (3-D, scalar, finite, a usable geometry) and of the label
        # maps against them (values; a labelled voxel on the image), before any method runs; not
        # part of the method's time
        fixed, moving = checked_image(fixed, "fixed image"), checked_image(moving, "moving image")
        checked_labels(fixed_labels, fixed, "fixed labels")
        checked_labels(moving_labels, moving, "moving labels")
        checked = time.perf_counter()
        translation = job.init.translation(fixed, moving)
        moving = shifted(moving, translation)
        aligned = time.perf_counter()
        output = run_method(job.method, fixed, moving)
        total = time.perf_counter() - start - (checked - loaded)
        if moving_labels is not None:
            moving_labels = shifted(moving_labels, translation)
        gt = read_field(job.pair.gt_field) if job.pair.gt_field else None
        if gt is not None:
            gt = relative_to_alignment(gt, translation)
        metrics = {p: evaluate_field(output.field, fixed_labels, moving_labels, p, gt) for p in job.protocols}
        record.update({"status": "ok", "time_total_s": total, "initial_translation_mm": [float(v) for v in translation],
                       "timings": {"load": loaded - start, "align": aligned - checked, **output.timings},
                       "metrics": metrics})
    except Exception as error:  # any failure of this pair is reported, the run goes on
        record.update({"status": "failed", "error": f"{type(error).__name__}: {error}",
                       "traceback": traceback.format_exc(limit=8)})
    return json_safe(record)


#: The most threads per pair on a Dask cluster, whose machines this one does not know.
MAX_THREADS = 1024


def _limit_threads(threads: int) -> None:
    if threads > 0:
        import torch

        torch.set_num_threads(threads)
        os.environ["ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"] = str(threads)


# ============================================================================ records on disk
def record_path(out_dir: Path, job: Job) -> Path:
    return out_dir / "records" / safe_name(job.method.name) / f"{job.pair.file_stem()}.json"


def load_finished(out_dir: Path, job: Job) -> Optional[Dict[str, Any]]:
    """The stored record of ``job`` when it finished with the same key, else None."""
    path = record_path(out_dir, job)
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if record.get("status") == "ok" and record.get("key") == json.loads(json.dumps(job.key())):
        return record
    return None


def _store(out_dir: Path, job: Job, record: Dict[str, Any]) -> None:
    path = record_path(out_dir, job)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(record, indent=1), encoding="utf-8")
    os.replace(tmp, path)


# ============================================================================ progress
class Progress:
    """A progress bar on stderr (tqdm when installed, else one line per finished job)."""

    def __init__(self, total: int, initial: int = 0, enabled: bool = True):
        self.total, self.done, self.enabled = total, initial, enabled
        self._bar = None
        if enabled:
            try:
                from tqdm import tqdm

                self._bar = tqdm(total=total, initial=initial, unit="pair", file=sys.stderr, dynamic_ncols=True)
            except ImportError:
                self._bar = None

    def update(self, message: str) -> None:
        self.done += 1
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.set_postfix_str(message, refresh=False)
            self._bar.update(1)
        else:
            print(f"[{self.done}/{self.total}] {message}", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


# ============================================================================ backends
def _serial(jobs: Sequence[Job]) -> Iterable[Tuple[Job, Dict[str, Any]]]:
    for job in jobs:
        yield job, run_job(job)


def _process_pool(jobs: Sequence[Job], workers: int) -> Iterable[Tuple[Job, Dict[str, Any]]]:
    # "spawn": torch and ITK thread pools do not survive fork().
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        futures = {pool.submit(run_job, job): job for job in jobs}
        for future in concurrent.futures.as_completed(futures):
            job = futures[future]
            yield job, _result_or_failure(job, future.result)


def _dask(jobs: Sequence[Job], scheduler: Any) -> Iterable[Tuple[Job, Dict[str, Any]]]:
    try:
        from distributed import Client, as_completed
    except ImportError:
        raise ConfigError("--scheduler needs dask.distributed; install the 'dask' extra "
                          "(pip install \"dask[distributed]\")") from None
    own = not isinstance(scheduler, Client)
    try:
        client = Client(scheduler, timeout=DASK_CONNECT_TIMEOUT) if own else scheduler
    except (OSError, TimeoutError, ValueError) as error:
        raise ConfigError(f"cannot connect to the Dask scheduler at {scheduler!r}: {error}") from None
    try:
        submitted = [(client.submit(run_job, job, pure=False), job) for job in jobs]
        by_key = {future.key: job for future, job in submitted}
        for future in as_completed([future for future, _ in submitted]):
            job = by_key[future.key]
            yield job, _result_or_failure(job, future.result)
    finally:
        if own:
            client.close()


def _result_or_failure(job: Job, get: Callable[[], Dict[str, Any]]) -> Dict[str, Any]:
    """The job's record, or a failure record when the worker itself died."""
    try:
        return get()
    except Exception as error:
        return {"key": job.key(), "pair_id": job.pair.pair_id, "method": job.method.name, "kind": job.method.kind,
                "settings": job.method.settings, "version": method_version(job.method.kind), "status": "failed",
                "error": f"worker failed: {type(error).__name__}: {error}"}


def _check_out_dir(out: Path, pairs: Sequence[PairSpec], inputs: Sequence[Union[str, Path]],
                   also_written: Sequence[str]) -> None:
    """InputError, before any pair runs, for an output folder that cannot take the results: not
    writable, a file, a folder where a results file goes, a file where the records go, or a
    results file that is one of the run's inputs (a pairs CSV named ``results.csv`` in it)."""
    from .report import RESULT_FILES

    check_output_dir(out)
    if (out / "records").exists() and not (out / "records").is_dir():
        raise InputError(f"{out / 'records'} is a file, where the per-pair records go: remove it or choose another "
                         "output directory")
    files = [path for pair in pairs for path in (pair.fixed, pair.moving, pair.fixed_labels, pair.moving_labels,
                                                  pair.gt_field)]
    check_output_targets(out, [*RESULT_FILES, *also_written], (), [*inputs, *files])


# ============================================================================ entry point
def run_evaluation(
    pairs: Sequence[PairSpec],
    methods: Sequence[MethodSpec],
    out_dir: Union[str, Path],
    protocols: Sequence[str] = ("half", "full"),
    workers: int = 1,
    scheduler: Any = None,
    resume: bool = True,
    threads: Optional[int] = None,
    progress: bool = True,
    title: str = "Evaluation",
    init: InitialAlignment = InitialAlignment(),
    inputs: Sequence[Union[str, Path]] = (),
    also_written: Sequence[str] = (),
) -> EvaluationRun:
    """Register every pair with every method, evaluate, and write ``results.csv``/``results.md``.

    Args:
        pairs: the pairs (:func:`.pairs.read_pairs`).
        methods: the methods (:func:`.methods.voxelopt_spec`, :func:`.methods.peer_spec`);
            names must be unique.
        out_dir: output folder (created); per-job records go to ``out_dir/records``.
        protocols: ``"half"`` and/or ``"full"`` (:mod:`.protocols`).
        workers: parallel jobs on this machine (a process pool when > 1).
        scheduler: a Dask scheduler address (``"tcp://host:8786"``) or a
            ``distributed.Client``; when given, jobs run on that cluster and ``workers`` is ignored.
        resume: skip jobs already finished in ``out_dir`` with the same settings.
        threads: threads per job (torch and ITK); default: CPU count / workers, at least 1.
        progress: show a progress bar on stderr.
        title: heading of ``results.md``.
        init: the common initial alignment, applied to the moving image and labels before every
            method (VoxelOpt specs must then have ``init == "none"``).
        inputs: files besides the pairs' that the run must not replace (the pairs CSV).
        also_written: names of files the caller writes into ``out_dir`` after the run (checked
            before it like ``results.csv``: not a folder, not an input).

    Returns:
        An :class:`EvaluationRun`. Failed jobs are in the tables and in ``failed``.

    Raises:
        InputError / ConfigError: empty pairs or methods, duplicate method names, an unknown
            peer, a VoxelOpt spec with its own initial alignment, bad protocols or worker count,
            unreachable scheduler. Per-pair errors never raise.
    """
    from .report import write_results

    protocols = check_protocols(protocols)
    if not pairs:
        raise InputError("no pairs to evaluate")
    if not methods:
        raise ConfigError("no methods to evaluate")
    names = [safe_name(m.name) for m in methods]
    if len(set(names)) != len(names):
        raise ConfigError(f"method names must be unique (as file names): {[m.name for m in methods]}")
    for method in methods:
        if method.kind == VOXELOPT:
            # a translation is the common start of every method and belongs to the run; VoxelOpt
            # keeps its own affine stage (see COMMON_MODES)
            own = method.settings.get("init", "none")
            if own != "none" and own in COMMON_MODES:
                raise ConfigError(f"{method.name}: give the initial alignment to the run (init=...), not to VoxelOpt "
                                  f"(init={method.settings['init']!r}), so that every method starts from it")
        else:
            get_peer(method.kind)
    if not isinstance(workers, int) or workers < 1:
        raise ConfigError(f"workers must be an integer >= 1, got {workers!r}")
    if threads is None:
        threads = max(1, (os.cpu_count() or 1) // (1 if scheduler is not None else workers))
    # on this machine, more threads than 4x its cores only oversubscribe it (100 000 ran out of memory)
    most = MAX_THREADS if scheduler is not None else 4 * (os.cpu_count() or 1)
    if not isinstance(threads, int) or isinstance(threads, bool) or not 1 <= threads <= most:
        raise ConfigError(f"threads per pair must be an integer from 1 to {most}"
                          f"{'' if scheduler is not None else ' (4x the cores of this machine)'}, got {threads!r}")
    out = Path(out_dir)
    _check_out_dir(out, pairs, inputs, also_written)
    out.mkdir(parents=True, exist_ok=True)

    jobs = [Job(pair, method, protocols, threads, init) for pair in pairs for method in methods]
    records: Dict[Tuple[str, str], Dict[str, Any]] = {}
    todo = []
    for job in jobs:
        stored = load_finished(out, job) if resume else None
        if stored is not None:
            records[(job.pair.pair_id, job.method.name)] = stored
        else:
            todo.append(job)
    bar = Progress(len(jobs), len(jobs) - len(todo), progress)
    if scheduler is not None:
        stream = _dask(todo, scheduler)
    elif workers > 1 and len(todo) > 1:
        stream = _process_pool(todo, workers)
    else:
        stream = _serial(todo)
    try:
        for job, record in stream:
            _store(out, job, record)
            records[(job.pair.pair_id, job.method.name)] = record
            error = record.get("error", "")
            status = "ok" if record["status"] == "ok" else "FAILED: " + (error if len(error) <= 100 else error[:99] + "…")
            bar.update(f"{job.method.name} {job.pair.pair_id} {status}")
    finally:
        bar.close()
    ordered = [records[(job.pair.pair_id, job.method.name)] for job in jobs]
    paths = write_results(out, ordered, methods, protocols, title, init)
    failed = [r for r in ordered if r["status"] != "ok"]
    return EvaluationRun(ordered, len(jobs) - len(todo), len(todo), failed, paths)
