"""The one error type a user can cause. A leaf module: every layer may import it.

The CLI turns a `UserError` into one line on stderr and exit status 2; anything else is an internal bug and keeps
its traceback.
"""


class UserError(Exception):
    """Bad input a user can fix (unknown name, missing file, corrupt checkpoint, wrong image mode, NaN loss).

    The message must say what is wrong and what to do, in one line.
    """

    def __init__(self, message: object = "") -> None:
        text = str(message)
        # torch re-raises a DataLoader worker's exception as `type(exc)(text)`, the text being "Caught ... in
        # DataLoader worker process N" and the worker's whole traceback: keep only the original message (the
        # traceback's last line), so the CLI prints one line whoever fetched the batch.
        if _WORKER_MARK in text:
            name = f"{type(self).__module__}.{type(self).__qualname__}: "
            last = text.strip().splitlines()[-1]
            text = last[last.find(name) + len(name):] if name in last else last
        super().__init__(text)


_WORKER_MARK = "Original Traceback (most recent call last):"


def first_line(exc: BaseException, named: bool = False) -> str:
    """An exception's first line (at most 200 characters) for a one-line error: library messages run over many
    lines. `named`: prefixed with the exception's type. Its type alone when it has no message."""
    text = str(exc).strip()
    line = text.splitlines()[0][:200] if text else ""
    if not line:
        return type(exc).__name__
    return f"{type(exc).__name__}: {line}" if named else line
