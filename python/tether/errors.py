"""Tether's status codes as Python exceptions. Each carries the library's (usually the daemon's)
one-sentence message, the numeric status and its C name."""


class TetherError(Exception):
    """Any failed Tether call. `status` is the tether_status number, `name` its C name
    (e.g. "TETHER_NOT_OWNER"), `message` the sentence."""

    status = -1

    def __init__(self, message, status=None, name=None):
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status
        self.name = name or type(self).__name__


class NotOwner(TetherError): status = 1
class OwnerExited(TetherError): status = 2
class DeviceLost(TetherError): status = 3
class InvalidArgument(TetherError, ValueError): status = 4
class AddressFault(TetherError): status = 5
class UnknownKernel(TetherError, ValueError): status = 6
class GridTooLarge(TetherError, ValueError): status = 7
class BackendUnavailable(TetherError): status = 8
class NoSuchThread(TetherError): status = 12
class NoSuchRegion(TetherError): status = 13
class ResourceExhausted(TetherError): status = 14
class PermissionDenied(TetherError, PermissionError): status = 15
class TimedOut(TetherError, TimeoutError): status = 18
class BadHandle(TetherError): status = 100


_BY_STATUS = {cls.status: cls for cls in (NotOwner, OwnerExited, DeviceLost, InvalidArgument, AddressFault, UnknownKernel,
                                          GridTooLarge, BackendUnavailable, NoSuchThread, NoSuchRegion,
                                          ResourceExhausted, PermissionDenied, TimedOut, BadHandle)}


def error_for(status, message, name):
    return _BY_STATUS.get(status, TetherError)(message, status, name)
