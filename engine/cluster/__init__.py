"""Studies spread over a Ray cluster: workers (Ray actors) that each hold the model and run the
evaluations a study sends them, with the interface of this process's runner
(engine.studies.runner). Ray is imported only when a cluster is asked for."""
