"""The options of the studies that run on a cluster (--cluster, --workers) or resume (--resume),
and the runner they pick: this process (engine.studies.runner.Local) or Ray workers
(engine.cluster.ray_workers.Cluster)."""
from __future__ import annotations

import os
import sys

from engine.errors import UserError

CLUSTER_HELP = ("run the evaluations on a Ray cluster: 'auto' (the one RAY_ADDRESS names, else a local instance on "
                "this machine) or the head's HOST:PORT; each worker loads the model once (default: RAY_ADDRESS's "
                "cluster when set, else this process)")


RESUME_HELP = "keep the results already in --out's file and run only the rest (default: start anew)"


def cluster_args(p, resume: str = RESUME_HELP) -> None:
    p.add_argument("--cluster", metavar="ADDRESS", help=CLUSTER_HELP)
    p.add_argument("--workers", type=int, help="workers on the cluster (default: one per GPU, else one per 4 CPUs, "
                                               "at least 2)")
    p.add_argument("--resume", action="store_true", help=resume)


def cluster_address(args) -> str | None:
    """--cluster, else RAY_ADDRESS, else None (this process)."""
    return args.cluster or os.environ.get("RAY_ADDRESS") or None


def runner(args, model: str | None = None, explorer=None, load: bool = True):
    """The runner of a study: Ray workers each holding the model when a cluster is asked for
    (said on stderr, worker by worker), else this process on `explorer` (loaded here if None).
    Not `load`: the tasks load the model themselves (the offload path)."""
    from engine.studies.runner import Local

    address = cluster_address(args)
    if address is None:
        if args.workers is not None:
            raise UserError("--workers: only with a cluster (--cluster or RAY_ADDRESS)")
        if not load:
            return Local(None)
        if explorer is None:
            from engine.cli.options import open_explorer

            explorer = open_explorer(args, model)
        return Local(explorer)
    from engine.cluster.ray_workers import Cluster

    cluster = Cluster.start(address, model or args.model, args.device, args.trust_remote_code, args.workers, load)
    print(f"cluster {address}: {len(cluster.workers)} workers {'hold' if load else 'for'} {model or args.model}: "
          + "; ".join(cluster.workers), file=sys.stderr)
    return cluster
