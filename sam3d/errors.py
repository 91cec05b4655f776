"""The error type for inputs a user can fix."""


class Sam3dError(ValueError):
    """A wrong path, config value, file or scan; the message names it and what to do.

    The ``sam3d`` command prints these messages without a traceback.
    """


class Sam3dWarning(UserWarning):
    """Something a user should know about a run that still goes on (skipped inputs, a check that never runs).

    The ``sam3d`` command prints these as ``sam3d: warning: ...``, without the file and line that warned.
    """
