"""The one exception type for mistakes a user can fix (bad flags, bad files, bad data).

The CLI prints such errors as a single line and exits non-zero, without a traceback;
anything else is a bug and keeps its traceback.
"""


class LotteryError(Exception):
    """A user-facing error: the message is the whole explanation."""
