"""The cluster the server was started with (`make run CLUSTER=ADDRESS`, `python -m ui.serve
--cluster ADDRESS`, or EXPLORER_CLUSTER=ADDRESS): the Trade-offs and Sensitivity pages send their
evaluations to its workers (engine.cluster). The workers of a model start when a page first asks
for them and are kept while the server runs, shared by every session; without a cluster the
pages measure in this process, as always."""
from __future__ import annotations

import os

import streamlit as st

from engine.errors import UserError

ENV = "EXPLORER_CLUSTER"


def address() -> str | None:
    return os.environ.get(ENV) or None


@st.cache_resource(show_spinner=False, max_entries=2)
def _workers(where: str, ref: str, device: str):
    from engine.cluster.ray_workers import Cluster

    return Cluster.start(where, ref, None if device == "auto" else device)


def runner(ctx):
    """The cluster's workers holding the page's model (said on the page), or None: no cluster,
    or one that cannot be used (said in a warning box; the page then measures in this process)."""
    where = address()
    if not where:
        return None
    try:
        with st.spinner(f"Starting the cluster's workers: each loads {ctx.ref}…"):
            cluster = _workers(where, ctx.ref, ctx.device)
            if not cluster.actors:  # every worker lost: start them again
                _workers.clear()
                cluster = _workers(where, ctx.ref, ctx.device)
    except UserError as e:
        st.warning(f"The cluster at {where} cannot be used ({e}); the studies run in this process.")
        return None
    st.caption(f"Measured on the cluster at {where}: {len(cluster.workers)} workers hold {ctx.ref}: "
               + "; ".join(cluster.workers) + ".")
    return cluster


def sweep_rows(cluster, points: list, full: bool, bar) -> list[dict]:
    """The Trade-offs page's rows of `points` ((method, recipe) pairs), measured on the cluster's
    workers, with the columns the page's own measuring gives; `bar`, a progress bar, says which
    worker gave each."""
    from engine.studies import sweep
    from engine.studies.runner import gather

    jobs = {str(k): (r, not full, None, None) for k, (_, r) in enumerate(points)}
    done = gather(cluster, sweep.point_task, jobs,
                  progress=lambda k, n, what: bar.progress(k / n, text=f"{k} of {n} points, from {what}"),
                  labels={key: job[0].describe() for key, job in jobs.items()})
    rows, first = [], ("label", "compressed_bytes", "original_bytes", "ratio")
    for (variant, r), row in zip(points, done.values()):
        metrics = {k: v for k, v in row.items() if k not in (*sweep.recipe_columns(r), *first, "estimate_only",
                                                             "apply_s", "evaluate_s", "recipe")}
        rows.append({"method": variant, **sweep.recipe_columns(r), **{k: row[k] for k in first}, **metrics,
                     "estimate_only": row["estimate_only"], "recipe": r.to_json().replace("\n", "")})
    return rows
