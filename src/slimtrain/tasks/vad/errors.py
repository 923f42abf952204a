"""The error every VAD corpus step raises (building, reading, choosing voices)."""


class DataError(ValueError):
    """The VAD data set cannot be built or loaded (the message says why)."""
