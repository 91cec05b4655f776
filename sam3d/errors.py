"""The error type for inputs a user can fix."""


class Sam3dError(ValueError):
    """A wrong path, config value, file or scan; the message names it and what to do.

    The ``sam3d`` command prints these messages without a traceback.
    """
