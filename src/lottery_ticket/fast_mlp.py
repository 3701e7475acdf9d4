"""Hand-written forward/backward for fully-connected networks (placeholder until implemented)."""


def supports(model, optimizer) -> bool:
    return False


def make_step(model, optimizer, masks):
    raise NotImplementedError
