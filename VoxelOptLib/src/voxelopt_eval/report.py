"""``results.csv`` and ``results.md``: per-pair rows and per-method means.

``results.csv`` has one row per (pair, method, protocol) plus one ``MEAN`` row per (method,
protocol), averaged over the pairs that finished (failed pairs are listed with their error and
left out of the means; ``n_pairs`` says how many entered, ``n_scored`` how many of them had a
label in both label maps and so entered the Dice and HD95 means). Columns: Dice as a fraction in
[0, 1] (``dice_mean``, ``dice_initial_mean``, ``dice_<label>``), HD95 in mm, ``sdlogj``
(Learn2Reg, log(J + 3)), ``sdlogj_plain``, ``folding_percent``, ``disp_error_mm_*`` when a
ground-truth field was given, and seconds: ``time_total_s`` end to end, ``time_<stage>_s``
per stage. ``results.md`` shows the same means (Dice in %) and the per-pair values, the common
initial alignment every method started from and what each method does from there, what the
times include, and each method's settings, package version and threads per pair.
"""

from __future__ import annotations

import csv
import json
import os
import platform
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from .alignment import InitialAlignment
from .methods import MethodSpec, threads_used
from .runner import method_stages

BASE_COLUMNS = ["pair_id", "method", "protocol", "status", "n_pairs", "n_scored", "dice_initial_mean", "dice_mean",
                "hd95_mm_initial_mean", "hd95_mm_mean", "sdlogj", "sdlogj_plain", "folding_percent", "jacobian_min",
                "disp_error_mm_mean", "disp_error_mm_labels", "gt_disp_mm_mean", "time_total_s"]
METRIC_KEYS = BASE_COLUMNS[6:17]

#: The files :func:`write_results` writes into the output folder.
RESULT_FILES = ("results.csv", "results.md")

PROTOCOL_TEXT = {
    "half": "official protocol: field, labels and Jacobian at half the fixed grid's voxels per axis (96x80x128 at 4 mm "
            "for the paper's 2 mm grid)",
    "full": "full resolution: field and labels on the fixed grid",
}


def record_rows(record: Dict[str, Any], protocol: str) -> Dict[str, Any]:
    """The flat CSV row of one record under one protocol."""
    row: Dict[str, Any] = {"pair_id": record["pair_id"], "method": record["method"], "protocol": protocol,
                           "status": record["status"]}
    if record["status"] != "ok":
        row["error"] = record.get("error", "")
        return row
    metrics = record["metrics"].get(protocol, {})
    for key in METRIC_KEYS:
        if key in metrics:
            row[key] = metrics[key]
    row["time_total_s"] = record.get("time_total_s")
    for stage, seconds in record.get("timings", {}).items():
        row[f"time_{stage}_s"] = seconds
    for label, value in (metrics.get("dice") or {}).items():
        row[f"dice_{label}"] = value
    return row


def mean_rows(rows: Sequence[Dict[str, Any]]) -> Dict[str, Any]:
    """The mean of the finished rows of one (method, protocol); None where no value exists."""
    ok = [r for r in rows if r["status"] == "ok"]
    prefixes = ("time_", "dice_", "hd95", "sdlogj", "folding", "jacobian", "disp_", "gt_")
    keys = list(dict.fromkeys(k for r in ok for k in r if k.startswith(prefixes)))
    out: Dict[str, Any] = {"pair_id": "MEAN", "method": rows[0]["method"], "protocol": rows[0]["protocol"],
                           "status": "mean", "n_pairs": len(ok),
                           "n_scored": sum(1 for r in ok if r.get("dice_mean") is not None)}
    for key in keys:
        values = [float(r[key]) for r in ok if r.get(key) is not None]
        out[key] = float(np.mean(values)) if values else None
    return out


def summarize(records: Sequence[Dict[str, Any]], protocol: str) -> Dict[str, Dict[str, Any]]:
    """Per method, the mean row (see :func:`mean_rows`) under ``protocol``."""
    by_method: Dict[str, List[Dict[str, Any]]] = {}
    for record in records:
        by_method.setdefault(record["method"], []).append(record_rows(record, protocol))
    return {method: mean_rows(rows) for method, rows in by_method.items()}


def write_results(out_dir: Path, records: Sequence[Dict[str, Any]], methods: Sequence[MethodSpec],
                  protocols: Sequence[str], title: str, init: InitialAlignment) -> Dict[str, Path]:
    """Write ``results.csv`` and ``results.md`` into ``out_dir``; returns their paths."""
    rows: List[Dict[str, Any]] = []
    for protocol in protocols:
        per_method: Dict[str, List[Dict[str, Any]]] = {}
        for record in records:
            row = record_rows(record, protocol)
            rows.append(row)
            per_method.setdefault(record["method"], []).append(row)
        rows.extend(mean_rows(r) for r in per_method.values())
    columns = list(BASE_COLUMNS)
    extra = sorted({k for r in rows for k in r if k not in columns and k != "error"}, key=_column_order)
    columns += extra + ["error"]
    csv_path = Path(out_dir) / RESULT_FILES[0]
    _atomic_write(csv_path, lambda handle: _write_csv(handle, rows, columns))
    md_path = Path(out_dir) / RESULT_FILES[1]
    text = markdown(records, methods, protocols, title, init)
    _atomic_write(md_path, lambda handle: handle.write(text))
    return {"results_csv": csv_path, "results_md": md_path}


def _column_order(name: str) -> tuple:
    group = 0 if name.startswith("time_") else 1
    tail = name.split("_", 1)[1]
    return (group, int(tail) if tail.isdigit() else 10**6, name)


def _write_csv(handle, rows, columns) -> None:
    writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _csv_value(v) for k, v in row.items()})


def _csv_value(value: Any) -> Any:
    if isinstance(value, float):
        return f"{value:.6g}"
    return "" if value is None else value


def _atomic_write(path: Path, write) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", newline="", encoding="utf-8") as handle:
        write(handle)
    os.replace(tmp, path)


# ============================================================================ markdown
def _fmt(value: Optional[float], digits: int = 2, scale: float = 1.0) -> str:
    return "–" if value is None else f"{scale * value:.{digits}f}"


def markdown(records: Sequence[Dict[str, Any]], methods: Sequence[MethodSpec], protocols: Sequence[str],
             title: str, init: InitialAlignment) -> str:
    """The results as markdown (summary per protocol, stage times, per pair, settings, failures)."""
    pairs = list(dict.fromkeys(r["pair_id"] for r in records))
    has_gt = any(r.get("status") == "ok" and any("disp_error_mm_mean" in m for m in r["metrics"].values())
                 for r in records)
    lines = [f"# {title}", "",
             f"{len(pairs)} pair(s) x {len(methods)} method(s); machine: {platform.machine()}, "
             f"{os.cpu_count()} CPU core(s), Python {platform.python_version()}.", "",
             init.describe() + " From there each method runs:", "",
             *[f"- {m.name}: {method_stages(m)}." for m in methods], "",
             "Dice in % over the labels present in both the fixed and the moving label maps (a label the warp loses "
             "scores 0); HD95 in mm (a lost label: the fixed box's diagonal); SDlogJ = std log(J + 3) (Learn2Reg); "
             "time = seconds per pair, end to end: reading the images, the common initial alignment, the method's "
             "preprocessing and registration, and the conversion of its output to a displacement field. It excludes "
             "importing the method's package (done once per worker process before its first pair is timed, with "
             "what the package loads lazily, such as itk's modules), reading the labels and computing the metrics.",
             ""]
    for protocol in protocols:
        summary = summarize(records, protocol)
        lines += [f"## Mean over pairs — {protocol} ({PROTOCOL_TEXT[protocol]})", ""]
        header = "| Method | pairs | Dice % initial | Dice % | HD95 mm initial | HD95 mm | SDlogJ | SDlogJ plain | folding % |"
        header += " disp. error mm, whole grid / in the labels |" if has_gt else ""
        header += " time s |"
        lines += [header, "|" + "---|" * (header.count("|") - 1)]
        for method in methods:
            row = summary.get(method.name)
            if row is None:
                continue
            scored = "" if row["n_scored"] in (0, row["n_pairs"]) else f" (Dice, HD95: {row['n_scored']})"
            cells = [method.name, f"{row['n_pairs']}/{len(pairs)}{scored}", _fmt(row.get("dice_initial_mean"), 1, 100),
                     _fmt(row.get("dice_mean"), 1, 100), _fmt(row.get("hd95_mm_initial_mean")),
                     _fmt(row.get("hd95_mm_mean")), _fmt(row.get("sdlogj"), 3), _fmt(row.get("sdlogj_plain"), 3),
                     _fmt(row.get("folding_percent"), 3)]
            if has_gt:  # the whole grid is mostly air, where no tool has anything to match: the labels tell more
                cells.append(f"{_fmt(row.get('disp_error_mm_mean'))} / {_fmt(row.get('disp_error_mm_labels'))}")
            cells.append(_fmt(row.get("time_total_s"), 1))
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    lines += _stage_table(records, methods, protocols[0])
    for protocol in protocols:
        lines += [f"## Per pair — {protocol}", "", "| pair | method | Dice % initial | Dice % | HD95 mm | SDlogJ | folding % | time s |",
                  "|---|---|---|---|---|---|---|---|"]
        for record in records:
            row = record_rows(record, protocol)
            if row["status"] != "ok":
                lines.append(f"| {row['pair_id']} | {row['method']} | failed | | | | | |")
                continue
            lines.append(f"| {row['pair_id']} | {row['method']} | {_fmt(row.get('dice_initial_mean'), 1, 100)} | "
                         f"{_fmt(row.get('dice_mean'), 1, 100)} | {_fmt(row.get('hd95_mm_mean'))} | "
                         f"{_fmt(row.get('sdlogj'), 3)} | {_fmt(row.get('folding_percent'), 3)} | "
                         f"{_fmt(row.get('time_total_s'), 1)} |")
        lines.append("")
    lines += ["## Methods: settings and versions", "",
              "Threads: the torch and ITK threads each method used per pair (a peer's own `threads` setting when "
              "above 0, else the run's per-pair count); the settings below leave that setting out.", ""]
    for method in methods:
        own = [r for r in records if r["method"] == method.name]
        version = own[0].get("version", "") if own else ""
        settings = {k: v for k, v in method.settings.items() if k != "threads"}
        lines.append(f"- **{method.name}** ({method.kind} {version}, {_threads_text(method, own)}): "
                     f"`{json.dumps(settings, sort_keys=True)}`")
    lines.append("")
    failed = [r for r in records if r["status"] != "ok"]
    if failed:
        lines += ["## Failed pairs", ""]
        lines += [f"- {r['pair_id']} / {r['method']}: {r.get('error', '')}" for r in failed]
        lines.append("")
    return "\n".join(lines)


def _threads_text(method: MethodSpec, records: Sequence[Dict[str, Any]]) -> str:
    """The threads ``method`` used per pair in its finished ``records`` (:func:`.methods.threads_used`)."""
    counts = sorted({threads_used(method.settings, r["threads"]) for r in records if r["status"] == "ok"})
    if not counts:
        return "threads: no pair finished"
    texts = ["library default threads" if n == 0 else f"{n} thread{'s' if n != 1 else ''}" for n in counts]
    return " / ".join(texts) + " per pair"


def _stage_table(records: Sequence[Dict[str, Any]], methods: Sequence[MethodSpec], protocol: str) -> List[str]:
    summary = summarize(records, protocol)
    lines = ["## Mean time per stage (s)", "", "| Method | end to end | stages |", "|---|---|---|"]
    for method in methods:
        row = summary.get(method.name)
        if row is None or not row["n_pairs"]:
            continue
        stages = [(k[5:-2], v) for k, v in row.items() if k.startswith("time_") and k != "time_total_s" and v is not None]
        text = ", ".join(f"{name} {seconds:.2f}" for name, seconds in stages)
        lines.append(f"| {method.name} | {_fmt(row.get('time_total_s'))} | {text} |")
    lines.append("")
    return lines
