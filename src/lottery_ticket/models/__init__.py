"""Model registry. Importing this package registers every model family.

The registration order (the order `lth models` lists them) follows the paper: fully-connected,
Conv-2/4/6, VGG-19, ResNet-18.
"""

# isort: off
from lottery_ticket.models import fc  # noqa: F401  (registers lenet_300_100 and fc_*)
from lottery_ticket.models import conv  # noqa: F401  (registers conv2, conv4, conv6)
from lottery_ticket.models import vgg  # noqa: F401  (registers vgg19)
from lottery_ticket.models import resnet  # noqa: F401  (registers resnet18)

# isort: on
from lottery_ticket.models.registry import build_model, entry_for, registered

__all__ = ["build_model", "entry_for", "registered"]
