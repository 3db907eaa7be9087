"""Studies on a Ray cluster: a local instance of 2 CPUs, no dashboard, started once for this module
and stopped after it; its temporary folder is the test's own, made short (Ray's sockets live in it,
and a Unix socket's path may not exceed 107 bytes, which pytest's folders under xdist do).

The same results as this process, figure for figure, with two workers of one thread each on a
tiny model and on minilm; a worker killed mid-study has its job run on the other; a worker that
cannot load the model, a cluster without a GPU asked for one, an address where nothing answers:
one line each."""
import csv
import shutil
import tempfile

import pytest
import ray

from cli_harness import engine, main
from engine.cluster.ray_workers import NAMESPACE, Cluster
from engine.errors import UserError
from engine.recipe.recipe import Recipe
from engine.studies import planner, sensitivity, sweep
from engine.studies.runner import Local, gather

TIMINGS = ("apply_s", "evaluate_s")  # seconds, which differ from run to run


@pytest.fixture(scope="module")
def ray_address():
    folder = tempfile.mkdtemp(prefix="explorer-ray-")
    ray.init(num_cpus=2, include_dashboard=False, _temp_dir=folder, object_store_memory=80 * 2**20,
             log_to_driver=False, namespace=NAMESPACE)
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def tiny_cluster(ray_address, tiny_models):
    with Cluster.start(ray_address, tiny_models["gpt2"], "cpu", workers=2) as cluster:
        yield cluster


def _same(a: dict, b: dict, exact: bool = False) -> None:
    """The same figures: equal where `exact`, else to four significant figures (a low-rank
    model's products are summed in another order on another number of threads, which moves
    float32's last bits, and a rank statistic such as Spearman's by up to about 1e-5)."""
    assert a.keys() == b.keys()
    for k in a:
        if k in TIMINGS:
            continue
        if isinstance(a[k], float) and not exact:
            assert b[k] == pytest.approx(a[k], rel=1e-4, abs=1e-6), k
        else:
            assert a[k] == b[k], k


def test_sensitivity_and_the_planner_on_the_cluster_give_what_this_process_gives(tiny_cluster, tiny_explorers):
    ex = tiny_explorers["gpt2"]
    recipe = Recipe(bits=3)
    here = sensitivity.sensitivity(ex.workspace(), recipe, "type")
    seen = []
    there = sensitivity.sensitivity(ex.workspace(), recipe, "type", runner=tiny_cluster,
                                    on_result=lambda unit, row, worker: seen.append(worker))
    assert [r["unit"] for r in here["rows"]] == [r["unit"] for r in there["rows"]]
    for a, b in zip(here["rows"], there["rows"]):
        _same(a, b, exact=True)
    assert set(seen) == set(tiny_cluster.workers) and len(tiny_cluster.workers) == 2  # both did some
    assert all(w.startswith(("worker-0 on ", "worker-1 on ")) and "(1 CPU thread)" in w for w in tiny_cluster.workers)
    ladder = [planner.parse_option("2/g64")]
    p_here = planner.plan(ex.workspace(), recipe, by="type", ladder=ladder, rounds=1).to_dict()
    p_there = planner.plan(ex.workspace(), recipe, by="type", ladder=ladder, rounds=1, runner=tiny_cluster).to_dict()
    assert p_here["recipe"] == p_there["recipe"] and p_here["measured_choices"] == p_there["measured_choices"]
    for part in ("plan", "uniform"):
        assert p_here[part]["compressed_bytes"] == p_there[part]["compressed_bytes"]
        _same(p_here[part]["metrics"], p_there[part]["metrics"], exact=True)
    assert [(c["measured"], c["choice"]) for c in p_there["rounds"]] == [(c["measured"], c["choice"])
                                                                         for c in p_here["rounds"]]


def test_a_sweep_gives_the_rows_of_this_process_though_a_worker_is_killed_mid_study(tiny_cluster, tiny_explorers):
    recipes = sweep.grid([1, 0.5], [4, 2], [0, 0.5])
    jobs = sweep.jobs(recipes, quick=True)
    names = {a.name: a.handle for a in tiny_cluster.actors}
    arrived = []

    def kill_the_other(key, row, worker):  # the other worker is busy with a job: it dies mid-job
        arrived.append(key)
        if len(arrived) == 1:
            ray.kill(next(h for n, h in names.items() if n != worker))

    try:
        there = gather(tiny_cluster, sweep.point_task, jobs, on_result=kill_the_other)
        assert len(tiny_cluster.lost) == 1 and len(tiny_cluster.workers) == 1
    finally:
        tiny_cluster.close()  # its CPUs for the tests after this one, which start their own workers
    assert sorted(arrived) == sorted(jobs)  # each job once: none lost, none counted twice
    assert list(there) == list(jobs)  # in the study's order, whatever order they arrived in
    here = gather(Local(tiny_explorers["gpt2"]), sweep.point_task, jobs)
    for key in jobs:
        _same(here[key], there[key], exact=jobs[key][0].rank_ratio is None)  # no low rank: bit for bit


def test_the_command_line_sweep_on_a_cluster_writes_the_rows_it_writes_without(ray_address, tmp_path):
    """`python -m engine sweep minilm --bits 2,3,4,8 --out a.csv --cluster ADDRESS` (in a new
    interpreter, two workers; the first estimate, for time) against the same without --cluster:
    the same rows, bit for bit."""
    alone, spread = tmp_path / "alone.csv", tmp_path / "spread.csv"
    axes = ("sweep", "minilm", "--bits", "2,3,4,8", "--quick")
    code, _, err = main(*axes, "--out", str(alone))
    assert code == 0, err
    r = engine(*axes, "--out", str(spread), "--cluster", ray_address, "--workers", "2")
    assert r.returncode == 0, r.stderr
    assert f"cluster {ray_address}: 2 workers hold minilm: worker-0 on " in r.stderr
    assert "worker-1 on " in r.stderr and "4/4" in r.stderr  # the bar of results, with the worker of each
    a, b = (list(csv.DictReader(open(p, encoding="utf-8"))) for p in (alone, spread))
    assert len(a) == len(b) == 4
    for x, y in zip(a, b):
        _same(x, y, exact=True)


def test_a_model_larger_than_a_worker_takes_the_offload_path_on_each_worker(ray_address, tiny_models, tmp_path):
    """`sweep --max-memory`: each point loads the model within the limit (here all of it on disk),
    in this process or on a worker, with the same row."""
    args = ("sweep", tiny_models["gpt2"], "--bits", "3", "--quick", "--max-memory", "cpu=1MB")
    code, _, err = main(*args, "--out", str(tmp_path / "alone.csv"))
    assert code == 0, err
    code, _, err = main(*args, "--out", str(tmp_path / "spread.csv"), "--cluster", ray_address, "--workers", "2")
    assert code == 0, err
    assert "2 workers for " in err and "the model loaded per job within --max-memory" in err
    a, b = (list(csv.DictReader(open(tmp_path / f, encoding="utf-8"))) for f in ("alone.csv", "spread.csv"))
    assert len(a) == len(b) == 1
    _same(a[0], b[0], exact=True)
    code, _, err = main(*args[:-2], "--out", str(tmp_path / "a.csv"), "--offload-folder", str(tmp_path))
    assert code == 2 and "--offload-folder needs --max-memory" in err


def test_bad_clusters_and_workers_are_one_line_each(ray_address, tmp_path):
    code, _, err = main("sweep", "minilm", "--bits", "4", "--out", str(tmp_path / "a.csv"), "--cluster", "127.0.0.1:9")
    assert code == 2 and err.startswith("error: --cluster: no Ray cluster answers at 127.0.0.1:9") and err.count("\n") == 1
    code, _, err = main("sweep", "minilm", "--bits", "4", "--out", str(tmp_path / "a.csv"), "--cluster", "nowhere")
    assert code == 2 and "is not an address" in err and err.count("\n") == 1
    with pytest.raises(UserError, match=r"^--device cuda: the cluster has no GPU \(it has 2 CPUs\)$"):
        Cluster.start(ray_address, "minilm", "cuda")
    with pytest.raises(UserError, match=r"^worker-0: cannot load '.*no-such-model'"):
        Cluster.start(ray_address, str(tmp_path / "no-such-model"), "cpu", workers=1)
    code, _, err = main("sweep", "minilm", "--bits", "4", "--out", str(tmp_path / "a.csv"), "--workers", "2")
    assert code == 2 and "--workers: only with a cluster" in err


def test_the_app_started_with_a_cluster_measures_on_it_and_says_which_workers_hold_the_model(ray_address, monkeypatch,
                                                                                          tiny_models):
    """The Trade-offs page on a server started with --cluster (EXPLORER_CLUSTER), on a tiny GPT-2:
    its points come from the workers, the same as the page measures alone; the page names the
    workers. The Sensitivity page names the same workers."""
    from app_harness import ok, start
    from ui import cluster as on_cluster

    model = tiny_models["gpt2"]

    def sweep_table():
        at = ok(start("pages/tradeoffs.py", model=model))
        at.multiselect(key="tradeoffs_ratios").set_value([1.0, 0.5])
        at.multiselect(key="tradeoffs_bits").set_value([8, 3])
        at.multiselect(key="tradeoffs_sparsity").set_value([0.0])
        next(b for b in at.button if b.label == "Run sweep").click()
        ok(at.run())
        return at, at.dataframe[0].value

    _, alone = sweep_table()
    monkeypatch.setenv(on_cluster.ENV, ray_address)
    try:
        at, spread = sweep_table()
        said = " ".join(c.value for c in at.caption)
        assert f"Measured on the cluster at {ray_address}: 2 workers hold {model}: worker-0 on " in said
        assert list(alone.columns) == list(spread.columns) and len(alone) == 4
        for col in alone.columns:  # low rank included: the factors are the same on one thread or two
            if alone[col].dtype.kind == "f":
                assert list(spread[col]) == pytest.approx(list(alone[col]), rel=1e-4), col
            else:
                assert list(alone[col]) == list(spread[col]), col
        at = ok(start("pages/sensitivity.py", model=model, bits=4))
        assert any(f"2 workers hold {model}: worker-0 on " in c.value for c in at.caption)
    finally:
        on_cluster._workers.clear()  # the workers stop with the cluster; no later page finds them
