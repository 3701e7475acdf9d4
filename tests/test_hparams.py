from dataclasses import fields

import pytest

from lottery_ticket import hparams as H
from lottery_ticket.cli import build_parser
from lottery_ticket.errors import LotteryError


def parse(*argv):
    return build_parser().parse_args(["train", "--output-dir", "x", *argv])


def test_paper_preset_is_the_papers_lenet_protocol():
    hp = H.preset_hparams("paper")
    assert (hp.model.model, hp.dataset.dataset) == ("lenet_300_100", "mnist")
    assert (hp.training.optimizer, hp.training.lr, hp.dataset.batch_size) == ("adam", 1.2e-3, 60)
    assert (hp.training.iterations, hp.training.eval_every, hp.dataset.validation_size) == (50000, 100, 5000)
    assert (hp.pruning.fc_fraction, hp.pruning.output_fraction) == (0.2, 0.1)
    assert hp.model.init == "glorot_normal"


def test_original_code_preset():
    hp = H.preset_hparams("original-code")
    assert (hp.training.optimizer, hp.training.lr, hp.dataset.batch_size) == ("sgd", 0.1, 64)


def test_paper_preset_follows_the_model():
    assert H.preset_hparams("paper", "conv6").training.lr == 3e-4
    assert H.preset_hparams("paper", "conv6").pruning.conv_fraction == 0.15
    assert H.preset_hparams("paper", "fc_100").model.model == "fc_100"


def test_flags_override_the_preset_and_unset_flags_keep_it():
    hp = H.hparams_from_args(parse("--lr", "0.01", "--iterations", "7", "--augment"))
    assert (hp.training.lr, hp.training.iterations, hp.dataset.augment) == (0.01, 7, True)
    assert hp.dataset.batch_size == 60
    hp = H.hparams_from_args(parse("--preset", "original-code", "--batch-size", "32"))
    assert (hp.training.optimizer, hp.dataset.batch_size) == ("sgd", 32)


def test_every_hyperparameter_has_a_flag_in_help():
    text = build_parser()._subparsers._group_actions[0].choices["lottery"].format_help()
    for _section, cls in H.SECTIONS.items():
        for f in fields(cls):
            assert H.flag_name(f.name) in text, f.name


@pytest.mark.parametrize(
    "argv, message",
    [
        (("--fc-fraction", "1.0"), "must be in \\[0, 1\\)"),
        (("--output-fraction", "-0.1"), "must be in \\[0, 1\\)"),
        (("--preset", "nope"), "unknown preset"),
        (("--model", "resnet9000"), "unknown model"),
        (("--optimizer", "rmsprop"), "unknown optimizer"),
        (("--lr", "0"), "--lr must be > 0"),
        (("--eval-every", "0"), "--eval-every"),
        (("--lr-milestones", "5,x"), "comma-separated"),
        (("--dataset", "imagenet"), "unknown dataset"),
    ],
)
def test_invalid_hyperparameters_are_user_errors(argv, message):
    with pytest.raises(LotteryError, match=message):
        H.hparams_from_args(parse(*argv))


def test_digest_and_diff():
    a = H.preset_hparams("paper")
    b = H.hparams_from_args(parse("--lr", "0.002"))
    assert a.digest() == H.preset_hparams("paper").digest() != b.digest()
    assert H.diff(a, b) == ["training.lr: 0.0012 -> 0.002"]
    assert H.Hparams.from_dict(b.to_dict()) == b
    with pytest.raises(LotteryError, match="unknown hyperparameters"):
        H.Hparams.from_dict({"training": {"lrr": 1}})


def test_learning_rate_schedule():
    from lottery_ticket.trainer import learning_rate

    t = H.TrainingHparams(lr=0.1, warmup_iterations=10, lr_milestones="20,30", lr_gamma=0.1)
    assert learning_rate(t, 0) == pytest.approx(0.01)
    assert learning_rate(t, 9) == pytest.approx(0.1)
    assert learning_rate(t, 19) == pytest.approx(0.1)
    assert learning_rate(t, 20) == pytest.approx(0.01)
    assert learning_rate(t, 30) == pytest.approx(0.001)


def test_every_preset_is_valid():
    for name in H.PRESETS:
        H.validate(H.preset_hparams(name))
