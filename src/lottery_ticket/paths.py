"""Deprecated alias of `lottery_ticket.layout` (kept so code written against `paths` keeps working
until the branches of issue 11 are merged; use `lottery_ticket.layout`)."""

from lottery_ticket.layout import *  # noqa: F403
