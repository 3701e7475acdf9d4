"""The Ray backend on a local Ray cluster (a head and 2 worker nodes on this machine, with fake
GPUs requested fractionally): a lottery of 3 trials x 2 levels and a control sweep, a worker
node removed while its runs train. Every run completes, none is trained twice to completion,
the dead node's run lock is taken over by lease, and every result file is bitwise equal to the
same commands run with the local backend. Skipped only when Ray is not installed."""

import json
import os
import signal
import threading
import time

import pytest

ray = pytest.importorskip("ray")

from lottery_ticket import cli, layout, procs  # noqa: E402

LEASE_SECONDS = "2"  # the run-lock lease: how long a retry waits for the dead node's lock
FLAGS = ["--iterations", "400", "--eval-every", "100", "--validation-size", "1000", "--checkpoint-seconds", "0.2"]
LOTTERY = ["--trials", "3", "--levels", "1", *FLAGS]
CONTROLS = ["--control", "reinit", "--levels", "1", "--runs", "1"]


@pytest.fixture(scope="module")
def cluster():
    """One cluster for the module: a dead node is noticed within ~3 s (a health check every
    500 ms, 5 missed in a row; lenient enough for a busy 2-core machine); no usage statistics,
    no prompts."""
    from ray.cluster_utils import Cluster

    saved = dict(os.environ)
    os.environ.update(RAY_USAGE_STATS_ENABLED="0", RAY_USAGE_STATS_PROMPT_ENABLED="0",
                      LTH_LOCK_LEASE_SECONDS=LEASE_SECONDS)
    health = {"health_check_initial_delay_ms": 0, "health_check_period_ms": 500,
              "health_check_timeout_ms": 500, "health_check_failure_threshold": 5}
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False,
                                                      "_system_config": health})
    workers = [c.add_node(num_cpus=2, num_gpus=1) for _ in range(2)]  # (fake GPUs: resources only)
    ray.init(address=c.address, logging_level="WARNING", log_to_driver=False)
    try:
        yield c, workers
    finally:
        ray.shutdown()
        c.shutdown()
        os.environ.clear()
        os.environ.update(saved)


@pytest.fixture(scope="module")
def local(cluster, mnist_root, tmp_path_factory):
    """The reference: the same lottery and controls with the local backend (the process pool)."""
    exp = tmp_path_factory.mktemp("local") / "exp"
    data = ["--data-root", str(mnist_root)]
    assert cli.main(["lottery", *LOTTERY, *data, "--quiet", "--workers", "2", "--output-dir", str(exp)]) == 0
    assert cli.main(["reinit", *CONTROLS, *data, "--quiet", "--workers", "2", "--experiment", str(exp)]) == 0
    return exp


def _ray_flags(c) -> list[str]:
    return ["--backend", "ray", "--ray-address", c.address, "--gpus-per-run", "0.5", "--quiet"]


def _result_files(exp) -> dict:
    """Every run's result files (run.json, metrics.csv, the networks) by path within `exp`."""
    files = {}
    for run in sorted(p.parent for p in exp.rglob(layout.COMPLETE)):
        for name in layout.RESULT_FILES:
            if (run / name).exists():
                files[str((run / name).relative_to(exp))] = (run / name).read_bytes()
    return files


def test_a_stopped_driver_cancels_its_tasks_and_the_same_command_resumes(cluster, local, tmp_path, mnist_root):
    """Ctrl-C on the driver: the tasks write their checkpoints and stop, the command exits 130;
    the same command again finishes the runs, bitwise as the local backend trains them."""
    c, _ = cluster
    exp = tmp_path / "exp"
    argv = ["lottery", "--trials", "2", "--levels", "0", *FLAGS, "--data-root", str(mnist_root), *_ray_flags(c),
            "--output-dir", str(exp)]

    def stop_once_a_run_has_a_checkpoint():
        while not any(exp.rglob(layout.CHECKPOINT_FILE)):
            time.sleep(0.02)
        procs.request_stop(signal.SIGINT)  # (what Ctrl-C does to the driver)

    stopper = threading.Thread(target=stop_once_a_run_has_a_checkpoint, daemon=True)
    stopper.start()
    assert cli.main(argv) == 130
    stopper.join()
    runs = [layout.run_dir(exp, t, 0) for t in range(2)]
    assert not all(layout.is_complete(run) for run in runs)
    assert not any(exp.rglob(layout.LOCK))  # every task stopped and let go of its run
    assert cli.main(argv) == 0
    assert all(layout.is_complete(run) for run in runs)
    level_0 = tuple(str(layout.run_dir(local, t, 0).relative_to(local)) for t in range(2))
    reference = {name: data for name, data in _result_files(local).items() if name.startswith(level_0)}
    assert len(reference) == 2 * 5 and _result_files(exp) == reference


def _kill_a_training_node(c, workers, exp, found: dict, stop: threading.Event) -> None:
    """Remove the worker node of the first run seen training there with a checkpoint written
    (checkpoints come with evaluations: iterations 100, 200, 300); `found` says which, when, and
    which runs the dead node held."""
    by_id = {node.node_id[:12]: node for node in workers}
    while not stop.is_set():
        for lock_file in exp.rglob(layout.LOCK):
            try:
                host = json.loads(lock_file.read_text())["host"]
            except (OSError, ValueError, KeyError):
                continue
            node = by_id.get(host.rsplit("/ray-", 1)[-1])
            if node is not None and (lock_file.parent / layout.CHECKPOINT / layout.CHECKPOINT_FILE).exists():
                found.update(run=str(lock_file.parent), node=node.node_id, host=host, killed=time.time())
                c.remove_node(node, allow_graceful=False)
                while any(n["NodeID"] == node.node_id and n["Alive"] for n in ray.nodes()):
                    time.sleep(0.05)
                found["detected"] = time.time()
                found["held"] = sorted(str(f.parent) for f in exp.rglob(layout.LOCK) if host in f.read_text())
                return
        time.sleep(0.02)


def test_lottery_and_controls_on_a_cluster_survive_a_node_loss_and_match_local(cluster, local, tmp_path, mnist_root,
                                                                                monkeypatch):
    c, workers = cluster
    data = ["--data-root", str(mnist_root)]
    backends = []
    make_backend = cli.make_backend
    monkeypatch.setattr(cli, "make_backend", lambda *a, **k: backends.append(make_backend(*a, **k)) or backends[-1])
    ray_flags = _ray_flags(c)
    exp = tmp_path / "ray"
    found, stop = {}, threading.Event()
    killer = threading.Thread(target=_kill_a_training_node, args=(c, workers, exp, found, stop))
    killer.start()
    started = time.time()
    try:
        assert cli.main(["lottery", *LOTTERY, *data, *ray_flags, "--output-dir", str(exp)]) == 0
    finally:
        stop.set()
        killer.join()
    finished = time.time()
    assert found, "no run was seen training on a worker node"
    # the controls on the one node left: two runs at once on its one (fake) GPU, 0.5 each
    assert cli.main(["reinit", *CONTROLS, *data, *ray_flags, "--experiment", str(exp)]) == 0
    lottery, controls = backends

    runs = [layout.run_dir(exp, t, k) for t in range(3) for k in range(2)]
    runs += [layout.run_dir(exp, t, 1, "reinit", 0) for t in range(3)]
    assert all(layout.is_complete(run) for run in runs)
    trained = [e[4] for b in backends for e in b.events if e[3] == "done" and e[5] is True]
    assert sorted(trained) == sorted(str(run) for run in runs)  # each run trained to completion once
    takeovers = [t for b in backends for r in b.records for t in r["takeovers"]]
    # the runs the dead node was training, and only those, were taken over once their lease expired
    assert found["held"]
    assert sorted((t["run"], t["holder"]["host"]) for t in takeovers) == [(run, found["host"]) for run in found["held"]]
    assert all("lease" in t["how"] for t in takeovers)
    assert all(r["status"] == "ok" and r["gpus"] for b in backends for r in b.records)
    assert {r["node"].rsplit("/", 1)[-1] for r in controls.records} != {found["node"][:6]}
    assert _result_files(exp) == _result_files(local) and len(_result_files(local)) == 9 * 5

    # the fault's timeline (printed with -s; numbers for the README)
    run = found["run"] if found["run"] in found["held"] else found["held"][0]  # (it may have finished meanwhile)
    trial, level = (int(run.split(part)[1].split("/")[0]) for part in ("trial_", "level_"))
    label = f"{exp}, trial {trial}, level {level}"  # (runner.LevelJob's label: one task per level)
    retry = min(e[0] for e in lottery.events if e[3] == "task" and e[4] == label and e[0] > found["killed"])
    took_over, (iteration, _) = next((e[0], e[5]) for e in lottery.events
                                     if e[3] == "start" and e[4] == run and e[0] > retry)
    assert iteration > 0 or run != found["run"]  # resumed from the checkpoint it had when its node died
    print(f"\nnode loss: detected {found['detected'] - found['killed']:.1f} s after the kill, retry started "
          f"{retry - found['killed']:.1f} s after, training resumed {took_over - found['killed']:.1f} s after "
          f"at iteration {iteration}; "
          f"the Ray lottery {finished - started:.1f} s in all")
