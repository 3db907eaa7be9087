"""The drivers: a loaded model, and what is done to copies of it.

    explorer   Explorer: one loaded model shared by every user, its caches and factors
    workspace  Workspace: one user's working copy, to which recipes are applied
    offload    a model larger than memory, compressed in place layer by layer
    footprint  memory planning from a config alone, without weights (`fit`)
    distill    recovery by knowledge distillation after compression
    run_report what `python -m engine run` reports, in memory or offloaded
"""
