"""lottery_ticket: lottery ticket experiments (Frankle & Carbin, ICLR 2019) in PyTorch."""

__version__ = "0.1.0"
