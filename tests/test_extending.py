"""docs/extending.md cannot rot: every `python` block runs, in order, in one namespace, and every
`lth` line of its `bash` blocks runs as a command, in a scratch directory on the real MNIST."""

import re
import shlex
from pathlib import Path

import pytest

from lottery_ticket import hparams
from lottery_ticket.branches import BRANCHES
from lottery_ticket.callbacks import CALLBACKS
from lottery_ticket.cli import main
from lottery_ticket.data.registry import DATASETS
from lottery_ticket.models import entry_for
from lottery_ticket.models import registry as models
from lottery_ticket.strategies import STRATEGIES

DOC = Path(__file__).resolve().parents[1] / "docs" / "extending.md"
FENCE = re.compile(r"^```(\w+)\n(.*?)^```$", re.S | re.M)
SECTIONS = ("## Add a pruning strategy", "## Add a dataset", "## Add a model (with its preset)",
            "## Add an evaluation callback", "## Add a branch")


def blocks(text: str) -> list[tuple[str, str, str]]:
    """(section heading, language, code) of every fenced block, in document order."""
    out = []
    for match in FENCE.finditer(text):
        headings = re.findall(r"^## .*$", text[: match.start()], re.M)
        out.append((headings[-1] if headings else "", match.group(1), match.group(2)))
    return out


@pytest.fixture
def registries(monkeypatch):
    """The registries as they were before the examples registered their entries."""
    saved = [(registry, dict(zip(registry.names(), map(registry.get, registry.names()), strict=True)))
             for registry in (STRATEGIES, DATASETS, CALLBACKS, BRANCHES)]
    monkeypatch.setattr(models, "_REGISTRY", list(models._REGISTRY))
    monkeypatch.setattr(hparams, "PRESETS", dict(hparams.PRESETS))
    yield
    for registry, entries in saved:
        registry._entries = entries


def test_every_section_has_code_and_a_command():
    found = blocks(DOC.read_text())
    for section in SECTIONS:
        kinds = {lang for heading, lang, _ in found if heading == section}
        assert kinds == {"python", "bash"}, section


def test_the_examples_run(mnist_root, tmp_path, monkeypatch, registries):
    monkeypatch.setenv("LTH_DATA", str(mnist_root))
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "extending_examples"}
    ran = 0
    for heading, lang, code in blocks(DOC.read_text()):
        if lang == "python":
            exec(compile(code, f"{DOC.name} ({heading})", "exec"), namespace)
            ran += 1
        elif lang == "bash":
            for line in code.splitlines():
                if line.startswith("lth "):
                    assert main(shlex.split(line)[1:]) == 0, line
                    ran += 1
    assert ran >= 16
    assert {"snip", "mnist_10k", "class_accuracy", "shuffle_weights"} <= set(
        STRATEGIES.names() + DATASETS.names() + CALLBACKS.names() + BRANCHES.names())
    assert entry_for("logreg").default_preset in hparams.PRESETS
    assert (tmp_path / "measured" / "trial_0" / "level_1" / "main" / "activations.csv").is_file()
