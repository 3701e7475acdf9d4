"""Model registry. Importing this package registers every model family.

The registration order (the order `lth models` lists them) follows the paper: fully-connected,
Conv-2/4/6, VGG-19, ResNet-18; then any other module of this package, alphabetically, so a new
model is one new file here that calls `register(ModelEntry(...))` and, for its paper
hyperparameters, `hparams.register_preset(...)` (see docs/extending.md).
"""

import importlib
import pkgutil

# isort: off
from lottery_ticket.models import fc  # noqa: F401  (registers lenet_300_100 and fc_*)
from lottery_ticket.models import conv  # noqa: F401  (registers conv2, conv4, conv6)
from lottery_ticket.models import vgg  # noqa: F401  (registers vgg19)
from lottery_ticket.models import resnet  # noqa: F401  (registers resnet18)

# isort: on
from lottery_ticket.models.registry import ModelEntry, build_model, entry_for, register, registered

for _module in pkgutil.iter_modules(__path__):  # a model added as one file registers itself
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["ModelEntry", "build_model", "entry_for", "register", "registered"]
