"""Choosing where runs go (`--backend`): flags checked before anything runs, a one-line error
naming what to install when Ray is missing, and what a Ray task checks before it trains."""

import sys

import pytest

from lottery_ticket import cli
from lottery_ticket.backends import make_backend
from lottery_ticket.errors import LotteryError

QUICK = ["--iterations", "2", "--eval-every", "1", "--levels", "0", "--quiet"]


def test_asking_for_ray_without_ray_is_one_line_naming_the_extra(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # (import ray: ImportError)
    with pytest.raises(LotteryError, match=r"pip install 'lottery_ticket\[ray\]'"):
        make_backend("ray")
    assert cli.main(["lottery", *QUICK, "--backend", "ray", "--output-dir", str(tmp_path / "exp")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: --backend ray needs Ray")
    assert not (tmp_path / "exp").exists()


@pytest.mark.parametrize("flags, message", [
    (["--ray-address", "head:6379"], "--ray-address needs --backend ray"),
    (["--gpus-per-run", "0.25"], "--gpus-per-run needs --backend ray"),
    (["--backend", "ray", "--cpus-per-run", "0"], "--cpus-per-run must be"),
    (["--backend", "ray", "--gpus-per-run", "nan"], "--gpus-per-run must be"),
    (["--backend", "ray", "--workers", "2"], "--workers is for --backend local"),
    (["--backend", "ray", "--batched"], "--batched"),
])
def test_backend_flags_are_checked_before_anything_is_written(tmp_path, capsys, flags, message):
    assert cli.main(["lottery", *QUICK, *flags, "--output-dir", str(tmp_path / "exp")]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "exp").exists()


def test_local_is_the_default_and_runs_in_the_process_pool():
    assert make_backend("local") is None
    args = cli.build_parser().parse_args(["lottery", "--output-dir", "x"])
    assert (args.backend, args.ray_address, args.cpus_per_run, args.gpus_per_run) == ("local", None, None, None)


def test_a_task_refuses_a_node_that_does_not_see_the_experiment(tmp_path):
    pytest.importorskip("ray")
    from lottery_ticket.backends.ray_cluster import check_sees, experiment_fingerprint
    from lottery_ticket.hparams import preset_hparams
    from lottery_ticket.runner import prepare_experiment

    exp = tmp_path / "exp"
    prepare_experiment(exp, preset_hparams("paper"), seed=0)
    seen = experiment_fingerprint(str(exp))
    check_sees(str(exp), seen, "node-a")  # the same files: fine
    with pytest.raises(LotteryError, match="node node-a does not see .*every node mounts"):
        check_sees(str(tmp_path / "elsewhere"), seen, "node-a")
    with pytest.raises(LotteryError, match="node node-a sees other hyperparameters"):
        check_sees(str(exp), seen.replace('"seed": 0', '"seed": 1'), "node-a")
    with pytest.raises(LotteryError, match="does not see the directory"):
        check_sees(str(tmp_path / "nowhere"), None, "node-a")
