"""Typed hyperparameters: four sections, presets, CLI flags, hashes and diffs.

Every field of every section becomes a `--flag` (underscores become dashes), so `--help` lists
every hyperparameter. A preset fills all fields; flags the user gives override it.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import hashlib
import json
import math
from dataclasses import dataclass, field, fields, replace
from typing import Any

from lottery_ticket.errors import LotteryError
from lottery_ticket.registries import ChoicesHelp

INT_MAX = 2**63 - 1  # every integer hyperparameter fits 64 bits: torch seeds and iteration counters


@dataclass(frozen=True)
class Range:
    """The allowed values of a numeric hyperparameter, declared next to its field: `low <= v`
    (`low < v` if `low_open`) and `v < high` if `high` is given. Floats must also be finite
    (nan and inf are never meaningful here), integers at most INT_MAX."""

    low: float
    high: float | None = None
    low_open: bool = False

    def text(self, kind: type) -> str:
        """The allowed values in words, for --help."""
        if kind is int:
            return f"an integer >= {self.low:g}"
        if self.high is not None:
            return f"{'(' if self.low_open else '['}{self.low:g}, {self.high:g})"
        return f"{'>' if self.low_open else '>='} {self.low:g}, finite"

    def error(self, flag: str, value, kind: type) -> str | None:
        """The one-line complaint about `value`, or None if it is allowed."""
        if kind is int:
            if isinstance(value, bool) or not isinstance(value, int):
                return f"{flag} must be an integer, got {value!r}"
            if value < self.low:
                return f"{flag} must be an integer >= {self.low}, got {value}"
            if value > INT_MAX:
                return f"{flag} must be at most 2**63 - 1 = {INT_MAX}, got {value}"
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return f"{flag} must be a number, got {value!r}"
        inside = (value > self.low if self.low_open else value >= self.low) and math.isfinite(value)
        if self.high is not None:
            if inside and value < self.high:
                return None
            return f"{flag} must be in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}), got {value}"
        return None if inside else f"{flag} must be {'>' if self.low_open else '>='} {self.low:g} and finite, got {value}"


class _Section:
    """Field-by-field checks from each field's metadata: type, `range` (numbers), `choices` (strings)."""

    def validate(self) -> None:
        for f in fields(self):
            value, flag, kind = getattr(self, f.name), flag_name(f.name), _kind(f)
            if "range" in f.metadata:
                problem = f.metadata["range"].error(flag, value, kind)
                if problem:
                    raise LotteryError(problem)
            elif not isinstance(value, kind):
                raise LotteryError(f"{flag} must be {'true or false' if kind is bool else 'a string'}, got {value!r}")
            choices = _choices(f)
            if choices is not None and value not in choices:
                raise LotteryError(f"unknown {f.name.replace('_', ' ')} {value!r}: {flag} must be one of "
                                  f"{', '.join(choices)}")


def _choices(f) -> list[str] | tuple[str, ...] | None:
    """A string field's allowed values: a tuple, or a function naming a registry's entries."""
    choices = f.metadata.get("choices")
    return choices() if callable(choices) else choices


def _kind(f) -> type:
    """The Python type of a hyperparameter field (annotations are strings here)."""
    return {"int": int, "float": float, "str": str, "bool": bool}[f.type if isinstance(f.type, str) else f.type.__name__]


@dataclass(frozen=True)
class DatasetHparams(_Section):
    dataset: str = field(default="mnist", metadata={"help": "a registered dataset", "choices": lambda: dataset_names()})
    batch_size: int = field(default=60, metadata={"help": "training minibatch size", "range": Range(1)})
    validation_size: int = field(
        default=5000, metadata={"help": "training examples held out for validation", "range": Range(0)}
    )
    split_seed: int = field(default=0, metadata={"help": "seed of the validation split", "range": Range(0)})
    normalization: str = field(
        default="standard",
        metadata={"help": "standard (dataset mean/std) | l2 (per example, as the original code) | none", "choices": ("standard", "l2", "none")},
    )
    augment: bool = field(
        default=False, metadata={"help": "random 4-pixel crop and horizontal flip (images only)"}
    )
    permute_labels: bool = field(
        default=False,
        metadata={"help": "relabel the classes by one random permutation of the class ids (seeded per trial), "
                          "the same for training, validation and test labels, as the original library's "
                          "--permute_labels: still learnable"},
    )
    random_labels: bool = field(
        default=False,
        metadata={"help": "shuffle the training and validation labels across examples (seeded per trial; test "
                          "labels stay true): random labels, a memorization experiment"},
    )


@dataclass(frozen=True)
class ModelHparams(_Section):
    model: str = field(default="lenet_300_100", metadata={"help": "a registered model (see `lth models`)"})
    init: str = field(
        default="glorot_normal",
        metadata={"help": "glorot_normal | glorot_truncated_normal (the original TensorFlow code's) | "
                          "glorot_uniform | kaiming_normal | kaiming_uniform", "choices": lambda: initializer_names()},
    )
    dropout: float = field(default=0.0, metadata={"help": "dropout after hidden fully-connected layers (conv nets)", "range": Range(0, 1)})


@dataclass(frozen=True)
class TrainingHparams(_Section):
    optimizer: str = field(default="adam", metadata={"help": "adam | sgd", "choices": ("adam", "sgd")})
    lr: float = field(default=1.2e-3, metadata={"help": "learning rate", "range": Range(0, low_open=True)})
    momentum: float = field(default=0.0, metadata={"help": "SGD momentum", "range": Range(0, 1)})
    weight_decay: float = field(default=0.0, metadata={"help": "L2 weight decay (added to the gradient)", "range": Range(0)})
    iterations: int = field(default=50000, metadata={"help": "training iterations (minibatches)", "range": Range(0)})
    epochs: int = field(
        default=0,
        metadata={"help": "if > 0, train this many epochs (of floor(training examples / batch size) "
                          "iterations) instead of --iterations; giving only --iterations sets it to 0", "range": Range(0)},
    )
    eval_every: int = field(
        default=100, metadata={"help": "evaluate validation and test every this many iterations", "range": Range(1)}
    )
    warmup_iterations: int = field(
        default=0, metadata={"help": "linear learning-rate warmup from 0 over this many iterations", "range": Range(0)}
    )
    lr_milestones: str = field(
        default="",
        metadata={"help": "comma-separated iterations (e.g. 20000) or epochs (e.g. 80ep) where the lr "
                          "is multiplied by --lr-gamma"},
    )
    lr_gamma: float = field(default=0.1, metadata={"help": "learning-rate decay factor at each milestone", "range": Range(0, low_open=True)})
    rewind_iteration: int = field(
        default=0,
        metadata={"help": "late rewinding: reset to the level-0 weights at this iteration instead of 0", "range": Range(0)},
    )
    same_order_per_trial: bool = field(
        default=False,
        metadata={"help": "one training data order for every level and control run of a trial (this "
                          "library's behaviour before per-run orders); default: each run draws its own order, "
                          "as the reference implementations do"},
    )


@dataclass(frozen=True)
class PruningHparams(_Section):
    strategy: str = field(
        default="layerwise",
        metadata={
            "help": "a registered pruning strategy: layerwise (per-layer rates), global (one threshold), ...",
            "choices": lambda: strategy_names(),
        },
    )
    fc_fraction: float = field(
        default=0.2, metadata={"help": "layerwise: fraction of remaining fully-connected weights pruned per level", "range": Range(0, 1)}
    )
    conv_fraction: float = field(
        default=0.1, metadata={"help": "layerwise: fraction of remaining conv weights pruned per level", "range": Range(0, 1)}
    )
    output_fraction: float = field(
        default=0.1, metadata={"help": "layerwise: fraction of remaining output-layer weights pruned per level", "range": Range(0, 1)}
    )
    global_fraction: float = field(
        default=0.2, metadata={"help": "global: fraction of all remaining prunable weights pruned per level", "range": Range(0, 1)}
    )
    never_prune: str = field(
        default="", metadata={"help": "comma-separated tensor names that are never pruned"}
    )
    score_data: str = field(
        default="per_class",
        metadata={"help": "snip, grasp: the training examples scored: per_class (--score-per-class examples of "
                          "each class, as GraSP's code and Frankle et al. 2021) | batch (--score-batch examples, "
                          "as SNIP's paper); drawn from the training split by the run's seed",
                  "choices": ("per_class", "batch")},
    )
    score_per_class: int = field(
        default=10, metadata={"help": "snip, grasp: training examples per class (--score-data per_class)", "range": Range(1)}
    )
    score_batch: int = field(
        default=100, metadata={"help": "snip, grasp: training examples scored (--score-data batch)", "range": Range(1)}
    )
    grasp_temperature: float = field(
        default=200.0, metadata={"help": "grasp: the logits are divided by this temperature T (GraSP's code: 200)",
                                 "range": Range(0, low_open=True)}
    )
    synflow_iterations: int = field(
        default=100, metadata={"help": "synflow: scoring/pruning rounds on an exponential density schedule "
                                       "(Tanaka et al. 2020: 100)", "range": Range(1)}
    )
    allow_layer_collapse: bool = field(
        default=False, metadata={"help": "let a score-based strategy prune a whole layer to zero (by default "
                                         "layer collapse is an error)"}
    )


@dataclass(frozen=True)
class Hparams:
    dataset: DatasetHparams = field(default_factory=DatasetHparams)
    model: ModelHparams = field(default_factory=ModelHparams)
    training: TrainingHparams = field(default_factory=TrainingHparams)
    pruning: PruningHparams = field(default_factory=PruningHparams)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, dict[str, Any]]) -> Hparams:
        """The hyperparameters of `d` (e.g. read from experiment.json), checked like flags are;
        older records read as they ran (see `_upgrade`)."""
        if not isinstance(d, dict):
            raise LotteryError(f"hyperparameters must be a JSON object of sections, got {type(d).__name__}")
        unknown = set(d) - set(SECTIONS)
        if unknown:
            raise LotteryError(f"unknown hyperparameter sections {sorted(unknown)}")
        sections = {}
        for f in fields(cls):
            section_cls = f.default_factory
            kinds = {sf.name: _kind(sf) for sf in fields(section_cls)}
            values = d.get(f.name, {})
            if not isinstance(values, dict):
                raise LotteryError(f"hyperparameter section {f.name} must be a JSON object, got {values!r}")
            if f.name in d:
                values = _upgrade(f.name, values)
            unknown = set(values) - set(kinds)
            if unknown:
                raise LotteryError(f"unknown hyperparameters in section {f.name}: {sorted(unknown)}")
            # JSON may spell a float as an integer (1 for 1.0); the CLI always gives floats
            values = {k: float(v) if kinds[k] is float and type(v) is int else v for k, v in values.items()}
            sections[f.name] = section_cls(**values)
        hp = cls(**sections)
        hp.validate()
        return hp

    def validate(self) -> None:
        """Reject impossible settings with one line naming the flag and what it allows."""
        validate(self)

    def digest(self) -> str:
        """A short stable hash of every hyperparameter (used to name and match experiments)."""
        text = json.dumps(self.to_dict(), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:12]


SECTIONS = {f.name: f.default_factory for f in fields(Hparams)}


def _upgrade(section: str, values: dict[str, Any]) -> dict[str, Any]:
    """A recorded section written before a field's meaning changed, read as what it ran.

    Records are complete (every field of their time), so a missing new field dates them:
    * dataset without `random_labels`: `permute_labels` then meant shuffling labels across
      examples, which is `random_labels` now;
    * training without `same_order_per_trial`: every run of a trial then used one data order.
    Such an experiment thus differs from today's defaults and is refused with the usual diff,
    and resumes unchanged with `--same-order-per-trial` (and `--random-labels` where it had
    `--permute-labels`)."""
    values = dict(values)
    if section == "dataset" and "random_labels" not in values:
        values["random_labels"] = values.pop("permute_labels", False)
        values["permute_labels"] = False
    if section == "training" and "same_order_per_trial" not in values:
        values["same_order_per_trial"] = True
    return values


# --------------------------------------------------------------------------- presets

_CONV_TRAINING = dict(optimizer="adam", iterations=20000, eval_every=100)

# Frankle & Carbin (2019) train Resnet-18 and VGG-19 with global pruning of the convolutions only
# (Figure 2: "conv 20%, fc 0%"). For Resnet-18 the prunable weights are the 3x3 convolutions: the
# two 1x1 downsample shortcut convolutions and the fc layer are never pruned (issue 12 item 1).
RESNET18_NEVER_PRUNE = "fc.weight,blocks.3.shortcut.0.weight,blocks.6.shortcut.0.weight"

# The Conv-2/4/6 dropout experiments (Frankle & Carbin 2019, Section 3 "Dropout" and its figure;
# dropout 0.5 on the hidden fully-connected layers): the learning rates differ from Figure 2's.
_DROPOUT_LR = {"conv2": 3e-4, "conv4": 2e-4, "conv6": 2e-4}


def _preset(dataset=None, model=None, training=None, pruning=None) -> Hparams:
    return Hparams(
        DatasetHparams(**(dataset or {})),
        ModelHparams(**(model or {})),
        TrainingHparams(**(training or {})),
        PruningHparams(**(pruning or {})),
    )


def _conv_preset(name: str, lr: float, iterations: int, conv_fraction: float, dropout: float = 0.0) -> Hparams:
    return _preset(
        dataset=dict(dataset="cifar10"),
        model=dict(model=name, dropout=dropout),
        training=dict(_CONV_TRAINING, lr=lr, iterations=iterations),
        pruning=dict(conv_fraction=conv_fraction, fc_fraction=0.2, output_fraction=0.1),
    )


# Every preset's description cites where its values come from (paper section/figure or the
# original code); `lth presets` prints them.
PRESETS: dict[str, tuple[Hparams, str]] = {
    "paper": (
        _preset(),
        "LeNet-300-100 on MNIST as in the paper (Frankle & Carbin 2019, Figure 2 and Section 2): "
        "Adam 1.2e-3, batch 60, 50,000 iterations, 5,000 validation images, "
        "prune 20% of each hidden layer and 10% of the output layer per level",
    ),
    "original-code": (
        _preset(
            dataset=dict(batch_size=64, normalization="l2", validation_size=0),
            model=dict(init="glorot_truncated_normal"),
            training=dict(optimizer="sgd", lr=0.1),
        ),
        "the original TensorFlow library's MNIST defaults (google-research/lottery-ticket-hypothesis: "
        "mnist_fc/constants.py, datasets/dataset_mnist.py, foundations/model_fc.py): SGD 0.1, batch 64, "
        "L2-normalized inputs, all 60,000 training images (no validation split: early stopping is "
        "measured on the test loss, as the report says), truncated-normal Glorot init "
        "(tf.contrib.layers.xavier_initializer(uniform=False)) "
        "(run 30 levels: --levels 30)",
    ),
    "conv2": (
        _conv_preset("conv2", lr=2e-4, iterations=20000, conv_fraction=0.1),
        "Conv-2 on CIFAR-10 (paper Figure 2): Adam 2e-4, batch 60, 20K iterations, conv 10%, fc 20%, output 10%",
    ),
    "conv4": (
        _conv_preset("conv4", lr=3e-4, iterations=25000, conv_fraction=0.1),
        "Conv-4 on CIFAR-10 (paper Figure 2): Adam 3e-4, batch 60, 25K iterations, conv 10%, fc 20%, output 10%",
    ),
    "conv6": (
        _conv_preset("conv6", lr=3e-4, iterations=30000, conv_fraction=0.15),
        "Conv-6 on CIFAR-10 (paper Figure 2): Adam 3e-4, batch 60, 30K iterations, conv 15%, fc 20%, output 10%",
    ),
    **{
        f"{name}-dropout": (
            _conv_preset(name, lr=_DROPOUT_LR[name], iterations=iterations, conv_fraction=conv, dropout=0.5),
            f"Conv-{name[-1]} with dropout 0.5 on the hidden fully-connected layers (paper Section 3, "
            f"'Dropout', and its figure's caption): Adam {_DROPOUT_LR[name]:g}, batch 60, "
            f"{iterations // 1000}K iterations (Figure 2's count: the dropout text gives no other), "
            f"conv {conv:.0%}, fc 20%, output 10%",
        )
        for name, iterations, conv in (("conv2", 20000, 0.1), ("conv4", 25000, 0.1), ("conv6", 30000, 0.15))
    },
    "vgg19": (
        _preset(
            dataset=dict(dataset="cifar10", batch_size=64, augment=True),
            model=dict(model="vgg19"),
            training=dict(
                optimizer="sgd", lr=0.1, momentum=0.9, weight_decay=1e-4, iterations=112480, epochs=160,
                eval_every=1000, warmup_iterations=10000, lr_milestones="80ep,120ep",
                lr_gamma=0.1, rewind_iteration=0,
            ),
            pruning=dict(strategy="global", global_fraction=0.2, never_prune="fc.weight"),
        ),
        "VGG-19 on CIFAR-10 (paper Figure 2 and Section 4): SGD 0.1 momentum 0.9, batch 64, "
        "160 epochs of the 45,000 training images (703 iterations each: 112,480 iterations), "
        "lr /10 at epochs 80 and 120 (iterations 56,240 and 84,360), 10K warmup iterations (Section 4: "
        "lr 0.1 with warmup finds tickets), global pruning 20% of conv weights (fc 0%); "
        "add --rewind-iteration for late rewinding",
    ),
    "resnet18": (
        _preset(
            dataset=dict(dataset="cifar10", batch_size=128, augment=True),
            model=dict(model="resnet18"),
            training=dict(
                optimizer="sgd", lr=0.03, momentum=0.9, weight_decay=1e-4, iterations=30000,
                eval_every=500, warmup_iterations=20000, lr_milestones="20000,25000",
                lr_gamma=0.1, rewind_iteration=0,
            ),
            pruning=dict(strategy="global", global_fraction=0.2, never_prune=RESNET18_NEVER_PRUNE),
        ),
        "ResNet-18 on CIFAR-10 (paper Figure 2 and Section 4): SGD momentum 0.9, batch 128, 30K iterations, "
        "lr /10 at 20K and 25K; lr 0.03 with 20K warmup iterations (Section 4: at lr 0.1 even with warmup "
        "no tickets are found, at 0.03 with warmup they are); global pruning 20% of the 3x3 convolutions "
        "(the fc layer and the two 1x1 downsample shortcuts are never pruned)",
    ),
}


def register_preset(name: str, hp: Hparams, description: str) -> None:
    """Add preset `name`: a model's file registers its paper preset next to its `ModelEntry`
    (whose `default_preset` names it), so one file adds a model and its hyperparameters. The
    description cites where the values come from; `lth presets` prints it."""
    if name in PRESETS and PRESETS[name][0] != hp:
        raise ValueError(f"preset {name!r} is already registered with other hyperparameters")
    PRESETS[name] = (hp, description)


def presets() -> dict[str, tuple[Hparams, str]]:
    """Every preset: the ones above, then those the model files register (importing the models:
    torch, so only where a preset is looked up, not when the CLI starts)."""
    import lottery_ticket.models  # noqa: F401  (registers the models and their presets)

    return dict(PRESETS)


def preset_hparams(preset: str, model: str | None = None) -> Hparams:
    """The preset's hyperparameters. `paper` picks the paper's preset for `model` if given."""
    if preset == "paper" and model is not None:
        from lottery_ticket.models import entry_for

        preset = entry_for(model).default_preset
    known = PRESETS if preset in PRESETS else presets()
    if preset not in known:
        raise LotteryError(f"unknown preset {preset!r}; known presets: {', '.join(known)}")
    hp = known[preset][0]
    if model is not None and model != hp.model.model:
        hp = replace(hp, model=replace(hp.model, model=model))
    return hp


# --------------------------------------------------------------------------- CLI flags


def flag_name(name: str) -> str:
    return "--" + name.replace("_", "-")


def add_hparam_flags(parser: argparse.ArgumentParser, sections=("dataset", "model", "training", "pruning")) -> None:
    """Add one flag per hyperparameter. Defaults are shown from the `paper` preset; an omitted
    flag keeps the chosen preset's value (argparse stores nothing for it)."""
    paper = PRESETS["paper"][0]
    for section in sections:
        group = parser.add_argument_group(f"{section} hyperparameters (default: from --preset)")
        for f in fields(SECTIONS[section]):
            shown = getattr(getattr(paper, section), f.name)
            allowed = f.metadata["range"].text(_kind(f)) if "range" in f.metadata else None
            help_text = f"{f.metadata.get('help', '')} (paper: {shown!r}{'; allowed: ' + allowed if allowed else ''})"
            if callable(f.metadata.get("choices")):  # a registry: its names, looked up when printed
                help_text = ChoicesHelp(help_text, f.metadata["choices"])
            dest = f"hp__{section}__{f.name}"
            if f.type in ("bool", bool):
                group.add_argument(
                    flag_name(f.name), dest=dest, action=argparse.BooleanOptionalAction,
                    default=argparse.SUPPRESS, help=help_text,
                )
            else:
                kind = {"int": int, "float": float, "str": str}[f.type if isinstance(f.type, str) else f.type.__name__]
                group.add_argument(
                    flag_name(f.name), dest=dest, type=kind, default=argparse.SUPPRESS,
                    metavar=kind.__name__.upper(), help=help_text,
                )


def initializer_names() -> list[str]:
    from lottery_ticket.models.init import INITIALIZERS

    return list(INITIALIZERS)


def dataset_names() -> list[str]:
    from lottery_ticket.data.registry import DATASETS

    return DATASETS.names()


def strategy_names() -> list[str]:
    from lottery_ticket.strategies import strategy_names as names

    return names()


def hparams_from_args(args: argparse.Namespace) -> Hparams:
    """Preset (`args.preset`) overridden by every hyperparameter flag given."""
    overrides: dict[str, dict[str, Any]] = {s: {} for s in SECTIONS}
    for key, value in vars(args).items():
        if key.startswith("hp__"):
            _, section, name = key.split("__", 2)
            overrides[section][name] = value
    hp = preset_hparams(args.preset, overrides["model"].get("model"))
    training = overrides["training"]
    if "iterations" in training and "epochs" not in training:
        training["epochs"] = 0  # --iterations alone wins over a preset's epochs (e.g. vgg19's 160)
    hp = Hparams(**{s: replace(getattr(hp, s), **overrides[s]) for s in SECTIONS})
    validate(hp)
    return hp


def validate(hp: Hparams) -> None:
    """Reject impossible settings with one clear message: every field against its own `range` or
    `choices` (see the section classes), then the settings that depend on each other."""
    for section in SECTIONS:
        getattr(hp, section).validate()
    d, t = hp.dataset, hp.training
    if d.permute_labels and d.random_labels:
        raise LotteryError("--permute-labels (relabelled classes) and --random-labels (shuffled labels) "
                           "are different experiments; choose one")
    from lottery_ticket.data.registry import DATASETS

    dataset = DATASETS.get(d.dataset)
    # checked here, before anything is written, not first when the dataset is loaded or trained on
    images = dataset.train_size
    if d.validation_size >= images:
        raise LotteryError(
            f"--validation-size must be less than the {images} {d.dataset} training images, got {d.validation_size}"
        )
    if d.batch_size > images - d.validation_size:
        raise LotteryError(
            f"--batch-size {d.batch_size} is larger than the training set "
            f"({images} {d.dataset} training images - {d.validation_size} validation = {images - d.validation_size})"
        )
    if t.iterations < 1 and t.epochs < 1:
        raise LotteryError("--iterations (or --epochs) must be >= 1")
    if t.epochs == 0:
        check_rewind(t, t.iterations)
    milestones(t, iterations_per_epoch(hp))


def check_rewind(t: TrainingHparams, total: int, levels: int = 0) -> None:
    """The one check of late rewinding against a run's `total` iterations: the rewind point must
    be within training, and, when levels after 0 retrain from it (`levels` > 0), before its end.
    `validate` calls it when `total` is known from the flags (--iterations), the training loops
    when it depends on the dataset (--epochs)."""
    if t.rewind_iteration > total:
        raise LotteryError(f"--rewind-iteration {t.rewind_iteration} is beyond the {total} training iterations")
    if levels > 0 and t.rewind_iteration >= total > 0:
        raise LotteryError(f"--rewind-iteration {t.rewind_iteration} must be less than --iterations "
                           f"{total}: levels after 0 train from the rewind iteration")


def iterations_per_epoch(hp: Hparams) -> int:
    """Iterations in one epoch: floor(training examples / batch size), as the trainer's order
    (the last partial batch of an epoch is dropped). E.g. VGG-19: 45,000 // 64 = 703."""
    from lottery_ticket.data.registry import DATASETS

    return (DATASETS.get(hp.dataset.dataset).train_size - hp.dataset.validation_size) // hp.dataset.batch_size


def milestones(t: TrainingHparams, per_epoch: int | None = None) -> list[int]:
    """The lr milestones in iterations. An entry `Nep` is epoch N, i.e. iteration N * `per_epoch`
    (as the paper states VGG-19's schedule: drops at epochs 80 and 120), so the counts are exact.
    The comma string (as on disk and on the command line) is parsed once (`_milestone_entries`)."""
    values = []
    for value, epochs in _milestone_entries(t.lr_milestones):
        if epochs:
            if per_epoch is None:
                raise ValueError("epoch milestones need the number of iterations per epoch")
            value *= per_epoch
        values.append(value)
    if values != sorted(values) or any(v < 1 for v in values):
        raise LotteryError(f"--lr-milestones must be increasing positive iterations, got {t.lr_milestones!r}")
    return values


@functools.lru_cache(maxsize=64)
def _milestone_entries(text: str) -> tuple[tuple[int, bool], ...]:
    """(number, whether in epochs) per entry of an --lr-milestones string."""
    entries = []
    for entry in (v.strip() for v in text.split(",")):
        if not entry:
            continue
        epochs = entry.endswith("ep")
        try:
            entries.append((int(entry[:-2] if epochs else entry), epochs))
        except ValueError:
            raise LotteryError(
                f"--lr-milestones must be comma-separated iterations or epochs (e.g. 80ep), got {text!r}"
            ) from None
    return tuple(entries)


def never_prune(p: PruningHparams) -> list[str]:
    """The tensor names of --never-prune (a comma string, as on disk), parsed once."""
    return list(_names(p.never_prune))


@functools.lru_cache(maxsize=64)
def _names(text: str) -> tuple[str, ...]:
    return tuple(n.strip() for n in text.split(",") if n.strip())


def diff(old: Hparams, new: Hparams) -> list[str]:
    """Human-readable differences, e.g. ['training.lr: 0.0012 -> 0.001']."""
    a, b = old.to_dict(), new.to_dict()
    out = []
    for section in SECTIONS:
        for name in a[section]:
            if a[section][name] != b[section][name]:
                out.append(f"{section}.{name}: {a[section][name]!r} -> {b[section][name]!r}")
    return out
