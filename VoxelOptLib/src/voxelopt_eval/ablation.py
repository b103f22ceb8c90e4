"""The paper's ablation table (Table 2): feature type, k, adaptive on/off, cost filtering on/off.

Variants are made one factor at a time from a base configuration (by default the ``paper``
preset): each listed feature type, each listed search radius k, adaptive message passing off,
cost filtering off. All variants run through :func:`.runner.run_evaluation` on the same pairs
(so they resume and parallelise the same way) and the means are written as
``ablation.csv`` and ``ablation.md`` next to ``results.csv``/``results.md``.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from voxelopt.config import RegistrationConfig
from voxelopt.errors import ConfigError

from .methods import MethodSpec, voxelopt_spec
from .pairs import PairSpec
from .report import PROTOCOL_TEXT, _atomic_write, _fmt, summarize
from .runner import EvaluationRun, run_evaluation

#: The files :func:`run_ablation` writes into the output folder besides ``results.*``.
ABLATION_FILES = ("ablation.csv", "ablation.md")


def ablation_variants(base: RegistrationConfig, features: Sequence[str] = ("raw", "mind"),
                      ks: Sequence[int] = (1, 2), adaptive: Sequence[bool] = (True, False),
                      filter_cost: Sequence[bool] = (True, False)) -> List[MethodSpec]:
    """The base configuration and its one-factor variants, as named VoxelOpt method specs.

    Raises ConfigError for an invalid value (e.g. k = 0) before anything runs.
    """
    variants: List[Tuple[str, RegistrationConfig]] = [("base", base)]
    seen = {base}
    for factor, values in (("features", features), ("k", ks), ("adaptive", adaptive), ("filter_cost", filter_cost)):
        for value in values:
            config = base.replace(**{factor: value})
            if config in seen:
                continue
            seen.add(config)
            text = ("on" if value else "off") if isinstance(value, bool) else str(value)
            variants.append((f"{factor}={text}", config))
    return [voxelopt_spec(config, name) for name, config in variants]


def _row(name: str, spec: MethodSpec, mean: Dict[str, Any]) -> Dict[str, Any]:
    s = spec.settings
    return {"variant": name, "features": s["features"], "k": s["k"], "adaptive": s["adaptive"],
            "filter_cost": s["filter_cost"], "n_pairs": mean["n_pairs"], "dice_mean": mean.get("dice_mean"),
            "dice_initial_mean": mean.get("dice_initial_mean"), "hd95_mm_mean": mean.get("hd95_mm_mean"),
            "sdlogj": mean.get("sdlogj"), "folding_percent": mean.get("folding_percent"),
            "time_total_s": mean.get("time_total_s"), "time_solver_s": mean.get("time_solver_s")}


def run_ablation(pairs: Sequence[PairSpec], out_dir: str, base: Optional[RegistrationConfig] = None,
                 features: Sequence[str] = ("raw", "mind"), ks: Sequence[int] = (1, 2),
                 protocol: str = "half", **run_options: Any) -> Tuple[EvaluationRun, Dict[str, Path]]:
    """Run the ablation and write ``ablation.csv``/``ablation.md`` (plus the usual results files).

    Args:
        pairs: the pairs.
        out_dir: output folder.
        base: the base configuration (default: the ``paper`` preset).
        features, ks: the feature types and search radii to compare.
        protocol: the protocol of the table (``"half"``: the paper's; or ``"full"``).
        run_options: passed to :func:`.runner.run_evaluation` (workers, scheduler, resume,
            threads, progress, init).
    """
    base = base if base is not None else RegistrationConfig.preset("paper")
    if protocol not in PROTOCOL_TEXT:
        raise ConfigError(f"unknown protocol {protocol!r}; choose one of {', '.join(PROTOCOL_TEXT)}")
    methods = ablation_variants(base, features, ks)
    run = run_evaluation(pairs, methods, out_dir, protocols=(protocol,), title="VoxelOpt ablation",
                         also_written=ABLATION_FILES, **run_options)
    means = summarize(run.records, protocol)
    rows = [_row(m.name, m, means[m.name]) for m in methods]
    out = Path(out_dir)
    paths = dict(run.paths)
    paths["ablation_csv"], paths["ablation_md"] = (out / name for name in ABLATION_FILES)

    def write_csv(handle) -> None:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        for row in rows:
            writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else ("" if v is None else v)) for k, v in row.items()})

    _atomic_write(paths["ablation_csv"], write_csv)
    lines = [f"# VoxelOpt ablation (Table 2) — {len(pairs)} pair(s), {protocol}: {PROTOCOL_TEXT[protocol]}", "",
             "| variant | features | k | adaptive | cost filtering | pairs | Dice % | HD95 mm | SDlogJ | folding % | time s | solver s |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['variant']} | {r['features']} | {r['k']} | {'on' if r['adaptive'] else 'off'} | "
                     f"{'on' if r['filter_cost'] else 'off'} | {r['n_pairs']}/{len(pairs)} | {_fmt(r['dice_mean'], 1, 100)} | "
                     f"{_fmt(r['hd95_mm_mean'])} | {_fmt(r['sdlogj'], 3)} | {_fmt(r['folding_percent'], 3)} | "
                     f"{_fmt(r['time_total_s'], 1)} | {_fmt(r['time_solver_s'], 2)} |")
    if rows:
        lines += ["", f"Initial Dice: {_fmt(rows[0]['dice_initial_mean'], 1, 100)} %. Base settings: "
                  f"every other parameter as in the base configuration (see results.md)."]
    text = "\n".join(lines) + "\n"
    _atomic_write(paths["ablation_md"], lambda handle: handle.write(text))
    return run, paths
