"""voxelopt_eval: VoxelOpt and peer tools on many pairs, the paper's protocols and tables.

A package beside the engine (it imports ``voxelopt``; ``voxelopt`` never imports it), with the
``voxelopt-eval`` command (:mod:`.cli`). Entry points:

* :func:`read_pairs`: a pairs CSV or a subject list (all ordered pairs);
* :func:`voxelopt_spec`, :func:`peer_spec`: the methods to run; the peers are the entries of
  the registry :data:`PEERS` (:func:`register_peer` adds one) and need optional packages;
* :class:`InitialAlignment`: the common starting point, applied to the moving image and labels
  once before every method;
* :func:`run_evaluation`: run every (pair, method) serially, in a process pool or on a Dask
  cluster, resume, and write ``results.csv``/``results.md``;
* :func:`run_ablation`: the paper's Table 2;
* :func:`evaluate_field`: the metrics of one displacement field under the ``half`` (official)
  or ``full`` protocol.

Units and conventions: fields in LPS mm on the fixed grid, ``warped(x) = moving(x + d(x))``;
Dice as a fraction (tables in %), HD95 in mm, times in seconds; scoring by :mod:`voxelopt.metrics`.
"""

from .ablation import ablation_variants, run_ablation
from .alignment import InitialAlignment
from .methods import MethodOutput, MethodSpec, Peer, voxelopt_spec
from .pairs import PairSpec, all_ordered_pairs, read_pairs, write_subject_list
from .peers import PEERS, get_peer, parse_peer_list, peer_spec, register_peer
from .protocols import PROTOCOLS, evaluate_field
from .runner import EvaluationRun, Job, method_version, run_evaluation, run_job, run_method

__all__ = [
    "PEERS",
    "PROTOCOLS",
    "EvaluationRun",
    "InitialAlignment",
    "Job",
    "MethodOutput",
    "MethodSpec",
    "PairSpec",
    "Peer",
    "ablation_variants",
    "all_ordered_pairs",
    "evaluate_field",
    "get_peer",
    "method_version",
    "parse_peer_list",
    "peer_spec",
    "read_pairs",
    "register_peer",
    "run_ablation",
    "run_evaluation",
    "run_job",
    "run_method",
    "voxelopt_spec",
    "write_subject_list",
]
