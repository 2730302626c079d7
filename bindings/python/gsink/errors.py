"""Exceptions: one class per gsink_status code, all derived from GsinkError.

Each class also derives from the closest built-in exception so that ordinary
Python code (``except ValueError``) keeps working.
"""

__all__ = [
    "GsinkError", "ClosedError", "NullArgumentError", "InvalidArgumentError", "OutOfMemoryError",
    "TokenOutOfRangeError", "SeqTooLongError", "BadConfigError", "CallOrderError",
    "NoTargetsError", "UnknownSiteError", "UnknownNameError", "OutOfRangeError",
    "BufferTooSmallError", "ShapeMismatchError", "GsinkIOError", "FormatError",
    "UnsupportedError", "NoDeviceError", "BackendError", "NonFiniteError",
    "MissingTensorError", "DeviceOutOfMemoryError", "BusyError", "CancelledError", "STATUS_NAMES", "error_class",
]

# gsink_status values (include/gsink.h); never renumbered.
OK = 0
STATUS_NAMES = {
    0: "GSINK_OK",
    1: "GSINK_ERR_NULL_ARGUMENT",
    2: "GSINK_ERR_INVALID_ARGUMENT",
    3: "GSINK_ERR_OUT_OF_MEMORY",
    4: "GSINK_ERR_TOKEN_OUT_OF_RANGE",
    5: "GSINK_ERR_SEQ_TOO_LONG",
    6: "GSINK_ERR_BAD_CONFIG",
    7: "GSINK_ERR_CALL_ORDER",
    8: "GSINK_ERR_NO_TARGETS",
    9: "GSINK_ERR_UNKNOWN_SITE",
    10: "GSINK_ERR_UNKNOWN_NAME",
    11: "GSINK_ERR_OUT_OF_RANGE",
    12: "GSINK_ERR_BUFFER_TOO_SMALL",
    13: "GSINK_ERR_SHAPE_MISMATCH",
    14: "GSINK_ERR_IO",
    15: "GSINK_ERR_FORMAT",
    16: "GSINK_ERR_UNSUPPORTED",
    17: "GSINK_ERR_NO_DEVICE",
    18: "GSINK_ERR_BACKEND",
    19: "GSINK_ERR_NON_FINITE",
    20: "GSINK_ERR_MISSING_TENSOR",
    21: "GSINK_ERR_DEVICE_OUT_OF_MEMORY",
    22: "GSINK_ERR_BUSY",
    23: "GSINK_ERR_CANCELLED",
}


class GsinkError(Exception):
    """Base class of every libgsink error.

    status: the gsink_status code (int), None for errors raised by the binding
    itself; message: the library's message for the failed call."""

    status = None

    def __init__(self, message, status=None):
        Exception.__init__(self, message)
        if status is not None:
            self.status = status
        self.message = message

    @property
    def status_name(self):
        return STATUS_NAMES.get(self.status, None) if self.status is not None else None

    def __str__(self):
        if self.status is None:
            return self.message
        return "%s (%s)" % (self.message, STATUS_NAMES.get(self.status, str(self.status)))


class ClosedError(GsinkError, ValueError):
    """A handle was used after close()."""


class NullArgumentError(GsinkError, ValueError):
    status = 1


class InvalidArgumentError(GsinkError, ValueError):
    status = 2


class OutOfMemoryError(GsinkError, MemoryError):
    status = 3


class TokenOutOfRangeError(GsinkError, ValueError):
    status = 4


class SeqTooLongError(GsinkError, ValueError):
    status = 5


class BadConfigError(GsinkError, ValueError):
    status = 6


class CallOrderError(GsinkError, RuntimeError):
    status = 7


class NoTargetsError(GsinkError, RuntimeError):
    status = 8


class UnknownSiteError(GsinkError, LookupError):
    status = 9


class UnknownNameError(GsinkError, LookupError):
    status = 10


class OutOfRangeError(GsinkError, IndexError):
    status = 11


class BufferTooSmallError(GsinkError, ValueError):
    status = 12


class ShapeMismatchError(GsinkError, ValueError):
    status = 13


class GsinkIOError(GsinkError):
    status = 14


class FormatError(GsinkError, ValueError):
    status = 15


class UnsupportedError(GsinkError, NotImplementedError):
    status = 16


class NoDeviceError(GsinkError, RuntimeError):
    status = 17


class BackendError(GsinkError, RuntimeError):
    status = 18


class NonFiniteError(GsinkError, ArithmeticError):
    status = 19


class MissingTensorError(GsinkError, LookupError):
    status = 20


class DeviceOutOfMemoryError(GsinkError, MemoryError):
    status = 21


class BusyError(GsinkError, RuntimeError):
    """The handle is inside a call on another thread (GSINK_ERR_BUSY). The
    binding's handles serialise their own calls with a lock, so this comes
    only from a handle shared with code outside the binding."""
    status = 22


class CancelledError(GsinkError, RuntimeError):
    """A progress callback asked to stop the run (GSINK_ERR_CANCELLED)."""
    status = 23


_BY_STATUS = {cls.status: cls for cls in (
    NullArgumentError, InvalidArgumentError, OutOfMemoryError, TokenOutOfRangeError,
    SeqTooLongError, BadConfigError, CallOrderError, NoTargetsError, UnknownSiteError,
    UnknownNameError, OutOfRangeError, BufferTooSmallError, ShapeMismatchError, GsinkIOError,
    FormatError, UnsupportedError, NoDeviceError, BackendError, NonFiniteError,
    MissingTensorError, DeviceOutOfMemoryError, BusyError, CancelledError)}


def error_class(status):
    """Exception class for a status code (GsinkError for codes this binding
    does not know, e.g. from a newer library)."""
    return _BY_STATUS.get(status, GsinkError)
