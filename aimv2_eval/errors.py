"""The one error type a user can cause. A leaf module: every layer may import it.

The CLI turns a `UserError` into one line on stderr and exit status 2; anything else is an internal bug and keeps
its traceback.
"""


class UserError(Exception):
    """Bad input a user can fix (unknown name, missing file, corrupt checkpoint, wrong image mode, NaN loss).

    The message must say what is wrong and what to do, in one line.
    """
