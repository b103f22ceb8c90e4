"""Dataset evaluation: VoxelOpt and peer tools on many pairs, the paper's protocols and tables.

Entry points (the ``voxelopt evaluate-dataset`` and ``voxelopt evaluate-ablation`` commands use
them):

* :func:`read_pairs`: a pairs CSV or a subject list (all ordered pairs);
* :func:`voxelopt_spec`, :func:`peer_spec`: the methods to run (peers need optional packages);
* :func:`run_evaluation`: run every (pair, method) serially, in a process pool or on a Dask
  cluster, resume, and write ``results.csv``/``results.md``;
* :func:`run_ablation`: the paper's Table 2;
* :func:`evaluate_field`: the metrics of one displacement field under the ``half`` (official)
  or ``full`` protocol.

Units and conventions: fields in LPS mm on the fixed grid, ``warped(x) = moving(x + d(x))``;
Dice as a fraction (tables in %), HD95 in mm, times in seconds.
"""

from .ablation import ablation_variants, run_ablation
from .methods import KINDS, PEER_KINDS, MethodOutput, MethodSpec, method_version, parse_peer_list, peer_spec, run_method, voxelopt_spec
from .pairs import PairSpec, all_ordered_pairs, read_pairs, write_subject_list
from .protocols import PROTOCOLS, evaluate_field, evaluation_grid
from .runner import EvaluationRun, Job, run_evaluation, run_job

__all__ = [
    "KINDS",
    "PEER_KINDS",
    "PROTOCOLS",
    "EvaluationRun",
    "Job",
    "MethodOutput",
    "MethodSpec",
    "PairSpec",
    "ablation_variants",
    "all_ordered_pairs",
    "evaluate_field",
    "evaluation_grid",
    "method_version",
    "parse_peer_list",
    "peer_spec",
    "read_pairs",
    "run_ablation",
    "run_evaluation",
    "run_job",
    "run_method",
    "voxelopt_spec",
    "write_subject_list",
]
