"""A study's evaluations on a Ray cluster: actors that each load the model once and run the jobs
sent to them, with the interface of engine.studies.runner.Local.

    with Cluster.start("auto", "minilm", workers=2) as cluster:   # or an address: "10.0.0.5:6379"
        cluster.workers                                          # which worker holds the model where
        gather(cluster, sweep.point_task, jobs)

Each actor takes one GPU where the cluster has GPUs and the device allows (else its share of the
CPUs, torch's threads set to it), loads the model on it, and runs one job at a time. A job whose
worker is lost (its process or node gone) goes back to the queue and runs on another worker; the
results arrive as each job ends, so nothing is lost or counted twice. Ray schedules the actors;
this module only keeps each busy.
"""
from __future__ import annotations

import logging
import os
import socket
from collections import deque
from dataclasses import dataclass

from engine.errors import UserError

log = logging.getLogger(__name__)
NAMESPACE = "compression-explorer"


def reachable(address: str, timeout: float = 3.0) -> None:
    """Refuse in one line an address no Ray head answers at (`host:port`, `ray://host:port`)."""
    hostport = address.split("://", 1)[-1]
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise UserError(f"--cluster: {address!r} is not an address (HOST:PORT, e.g. 10.0.0.5:6379, or 'auto')")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as e:
        raise UserError(f"--cluster: no Ray cluster answers at {address} ({e.strerror or e}); start one with "
                        "`ray start --head` on that machine") from None


def connect(address: str) -> bool:
    """Join the cluster at `address` ('auto': RAY_ADDRESS's, else a new local instance on this
    machine, its temporary folder under RAY_TMPDIR when set). True when this call started Ray
    (shut it down after), False when it was running already in this process."""
    import ray

    if address != "auto":
        reachable(address)
    elif ":" in os.environ.get("RAY_ADDRESS", ""):  # RAY_ADDRESS may itself say 'auto'
        reachable(os.environ["RAY_ADDRESS"])
    if ray.is_initialized():  # (the app's server, the tests): this process's cluster
        return False
    options = dict(include_dashboard=False, log_to_driver=False, configure_logging=True,
                   logging_level=logging.WARNING, namespace=NAMESPACE)
    if address != "auto":  # on other machines: the engine as this machine has it (the rest installed there)
        options["runtime_env"] = {"py_modules": [os.path.dirname(os.path.dirname(os.path.abspath(__file__)))]}
    try:
        ray.init(address=None if address == "auto" else address, **options)
    except (ConnectionError, RuntimeError) as e:
        raise UserError(f"--cluster: cannot join the Ray cluster at {address}: {str(e).splitlines()[0]}") from None
    return True


def default_workers(cpus: float, gpus: int, use_gpu: bool) -> int:
    """One worker per GPU; on CPUs, one per 4 CPUs, at least two where there are two.

    >>> default_workers(2, 0, False), default_workers(16, 0, False), default_workers(32, 8, True)
    (2, 4, 8)
    """
    return gpus if use_gpu else max(min(2, int(cpus)), int(cpus) // 4, 1)


@dataclass
class _Actor:
    name: str
    handle: object


def _actor_class():
    import ray

    @ray.remote(max_restarts=0)
    class StudyWorker:
        """One model loaded on one GPU or a share of the CPUs; runs the tasks sent to it."""

        def __init__(self, model, device, trust_remote_code, threads, name, load):
            import torch

            from engine.studies.runner import Worker

            self.error = None
            if threads:
                torch.set_num_threads(threads)
            cuda = device.startswith("cuda") and torch.cuda.is_available()
            where = torch.cuda.get_device_name(0) if cuda \
                else f"{torch.get_num_threads()} CPU thread{'s' * (torch.get_num_threads() > 1)}"
            explorer = None
            if load:
                try:
                    from engine.drivers.explorer import Explorer

                    explorer = Explorer.open(model, device, trust_remote_code)
                except Exception as e:  # noqa: BLE001 -- said by the driver, naming this worker
                    self.error = f"cannot load {model!r}: {str(e).splitlines()[0] if str(e) else type(e).__name__}"
                    return
            else:
                where += ", the model loaded per job within --max-memory"
            self.worker = Worker(explorer, f"{name} on {socket.gethostname()} ({where})")

        def describe(self):
            return {"error": self.error} if self.error else {"name": self.worker.name}

        def run(self, task, job):
            try:
                return {"result": task(self.worker, job)}
            except UserError as e:
                return {"error": str(e), "user": True}
            except Exception as e:  # noqa: BLE001 -- said by the driver, naming this worker
                return {"error": f"{type(e).__name__}: {e}", "user": False}

    return StudyWorker


class Cluster:
    """Workers on a Ray cluster, each holding `model`; `run` keeps them busy with a study's jobs."""

    def __init__(self, actors: list[_Actor], started: bool, share: dict | None = None):
        self.actors, self.started, self.lost = actors, started, []
        self.share = share or {}  # what each worker holds of the cluster, e.g. {"CPU": 1.0}

    @classmethod
    def start(cls, address: str, model: str, device: str | None = None, trust_remote_code: bool = False,
              workers: int | None = None, load: bool = True) -> "Cluster":
        """Join the cluster and start the workers, each loading `model` (unless not `load`: for
        tasks that load it themselves, the offload path); refused in one line: an address that
        does not answer, `device` cuda on a cluster without GPUs, a worker that cannot load the
        model (named)."""
        import ray

        started = connect(address)
        try:
            actors, share = _start_actors(ray, model, device, trust_remote_code, workers, load)
            return cls(actors, started, share)
        except BaseException:
            if started:
                ray.shutdown()
            raise

    @property
    def workers(self) -> list[str]:
        return [a.name for a in self.actors]

    def run(self, task, jobs: dict):
        """(key, result, worker) for each job, as each ends; a job whose worker is lost runs again
        on another. Raises UserError, naming the worker, when a job fails or every worker is lost."""
        import ray
        from ray.exceptions import RayActorError

        queue, idle, pending = deque(jobs.items()), list(self.actors), {}
        while queue or pending:
            while queue and idle:
                actor, (key, job) = idle.pop(0), queue.popleft()
                pending[actor.handle.run.remote(task, job)] = (actor, key, job)
            if not pending:
                raise UserError(f"every worker is lost ({', '.join(self.lost)}); {len(queue)} job(s) not run "
                                "(the results so far are kept)")
            [ref], _ = ray.wait(list(pending), num_returns=1)
            actor, key, job = pending.pop(ref)
            try:
                out = ray.get(ref)
            except RayActorError:
                log.warning("%s was lost; its job runs again on another worker", actor.name)
                self.lost.append(actor.name)
                self.actors = [a for a in self.actors if a is not actor]
                queue.appendleft((key, job))
                continue
            if "error" in out:
                raise UserError(f"{actor.name}: {out['error']}")
            idle.append(actor)
            yield key, out["result"], actor.name

    def close(self) -> None:
        """Stop the workers (and Ray, where this process started it), waiting up to 10 s for the
        cluster to have their CPUs or GPUs back, so that the next study finds them free."""
        import time

        import ray

        if not ray.is_initialized():
            return
        total, before = ray.cluster_resources(), ray.available_resources()
        want = {k: min(total.get(k, 0), before.get(k, 0) + v * len(self.actors)) for k, v in self.share.items()}
        for a in self.actors:
            ray.kill(a.handle)
        self.actors = []
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            now = ray.available_resources()
            if all(now.get(k, 0) >= v - 1e-6 for k, v in want.items()):
                break
            time.sleep(0.1)
        if self.started:
            ray.shutdown()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _start_actors(ray, model: str, device: str | None, trust_remote_code: bool,
                  workers: int | None, load: bool = True) -> tuple[list[_Actor], dict]:
    """The workers, sized from what the cluster has free (other studies' workers keep theirs),
    and what each holds of it."""
    res, free = ray.cluster_resources(), ray.available_resources()
    cpus, gpus = free.get("CPU", 0), int(free.get("GPU", 0))
    if device and device.startswith("cuda") and not res.get("GPU", 0):
        raise UserError(f"--device {device}: the cluster has no GPU (it has {res.get('CPU', 0):g} CPUs)")
    use_gpu = res.get("GPU", 0) > 0 and (device is None or device.startswith("cuda"))  # each actor's GPU is its cuda:0
    if workers is not None and workers < 1:
        raise UserError(f"--workers: must be at least 1, got {workers}")
    n = workers or default_workers(cpus, gpus, use_gpu)
    if use_gpu and n > gpus:
        raise UserError(f"--workers: {n} workers of one GPU each, but {gpus} of the cluster's "
                        f"{res['GPU']:g} GPUs are free")
    if not use_gpu and (n < 1 or cpus < 1):
        raise UserError(f"--cluster: no CPU is free on the cluster ({res.get('CPU', 0):g} CPUs, held by other work)")
    share = {"num_gpus": 1} if use_gpu else {"num_cpus": cpus / n}
    threads = None if use_gpu else max(1, int(cpus // n))
    StudyWorker = _actor_class()
    handles = [StudyWorker.options(**share).remote(model, "cuda" if use_gpu else (device or "cpu"),
                                                   trust_remote_code, threads, f"worker-{i}", load) for i in range(n)]
    actors = []
    for i, info in enumerate(ray.get([h.describe.remote() for h in handles])):
        if "error" in info:
            for h in handles:
                ray.kill(h)
            raise UserError(f"worker-{i}: {info['error']}")
        actors.append(_Actor(info["name"], handles[i]))
    return actors, {"GPU": 1.0} if use_gpu else {"CPU": cpus / n}
