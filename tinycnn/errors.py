"""The exception tinycnn raises on purpose for a mistake the user can fix.

UserError (and its subclasses, such as tinycnn.checkpoint.CheckpointError) means: the input, a
file, a path or a setting is wrong, and the message says what was expected, what was found and
what to do. The `tinycnn` command prints such a message as one line `tinycnn: error: ...` and exits
with status 1. Every other exception that escapes a command is a bug in tinycnn and keeps its
traceback, so it can be reported and fixed rather than mistaken for the user's error.

A command that finds a user mistake raises it directly:

    from tinycnn.errors import UserError
    raise UserError(f"--input {text!r}: expected C,H,W, three positive integers")
"""


class UserError(Exception):
    """An expected failure with a message for the user (bad argument, path, file or setting)."""
