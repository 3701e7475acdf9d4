"""Worker pools get the dataset from the parent in shared memory instead of loading their own."""

import json
from dataclasses import dataclass, replace
from pathlib import Path

from lottery_ticket import runner
from lottery_ticket.hparams import Hparams, preset_hparams


@dataclass(frozen=True)
class DatasetJob:
    hp: Hparams
    out: str


def report_dataset(job: DatasetJob, ctx: runner.RunOptions) -> None:
    """A worker job: which dataset did load_splits give this process?"""
    splits = runner.load_splits(job.hp, ctx, None)
    Path(job.out).write_text(json.dumps({
        "from_parent": bool(runner._SHARED_DATASETS),
        "shared_memory": splits.train_x.is_shared() and splits.test_x.is_shared(),
        "checksum": float(splits.train_x.double().sum()),
        "loaded_here": bool(runner._DATASETS),
    }))


def test_workers_use_the_parents_shared_dataset(mnist_root, tmp_path):
    hp = preset_hparams("paper")
    ctx = runner.Context(data_root=str(mnist_root), download=False, quiet=True)
    datasets = runner.shared_datasets(hp, ctx)
    (splits,) = datasets.values()
    assert splits.train_x.is_shared() and splits.validation_y.is_shared()
    jobs = [DatasetJob(hp, str(tmp_path / f"{i}.json")) for i in range(2)]
    runner.run_jobs(report_dataset, jobs, workers=2, threads=1, ctx=ctx, share=hp)
    for job in jobs:
        seen = json.loads(Path(job.out).read_text())
        assert seen == {"from_parent": True, "shared_memory": True, "loaded_here": False,
                        "checksum": float(splits.train_x.double().sum())}


def test_no_sharing_where_every_trial_has_its_own_labels(mnist_root):
    hp = preset_hparams("paper")
    hp = replace(hp, dataset=replace(hp.dataset, permute_labels=True))
    ctx = runner.Context(data_root=str(mnist_root), download=False, quiet=True)
    assert runner.shared_datasets(hp, ctx) == {}
    assert runner.shared_datasets(preset_hparams("paper"), replace(ctx, device="cuda")) == {}
