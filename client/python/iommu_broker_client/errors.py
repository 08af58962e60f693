"""Exceptions raised by the iommu-broker client.

Every failed call raises a BrokerError carrying the gRPC status code and the
broker's message (which names the field and value that were wrong). The
codes a caller commonly handles have their own subclass, so callers can write
``except NotFound:`` instead of comparing codes.
"""

import grpc


class BrokerError(Exception):
    """A call the broker (or the channel) refused.

    Attributes:
        code: the grpc.StatusCode.
        details: the status message, e.g.
            "iova 0x1003 is not aligned to the 4096-byte granule".
    """

    def __init__(self, code, details):
        super().__init__(f"{code.name}: {details}")
        self.code = code
        self.details = details


class InvalidArgument(BrokerError):
    """Malformed or unaligned input, or a required enum left unset."""


class NotFound(BrokerError):
    """Unknown domain or device."""


class AlreadyExists(BrokerError):
    """Duplicate id, or a map overlapping a mapping or reserved region."""


class FailedPrecondition(BrokerError):
    """Device not attached, unmap would split a mapping, domain busy."""


class OutOfRange(BrokerError):
    """Outside the aperture, above the DMA mask or the physical memory."""


class PermissionDenied(BrokerError):
    """Bypass required but refused."""


class ResourceExhausted(BrokerError):
    """IOVA space or a configured limit (batch size, streams, mappings)."""


class Unavailable(BrokerError):
    """The broker is shutting down or cannot be reached."""


_ERROR_CLASSES = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.ALREADY_EXISTS: AlreadyExists,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPrecondition,
    grpc.StatusCode.OUT_OF_RANGE: OutOfRange,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhausted,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
}

# Batch results carry google.rpc.Code numbers, which grpc.StatusCode values
# pair with their names: (3, "invalid argument").
_STATUS_CODES_BY_NUMBER = {code.value[0]: code for code in grpc.StatusCode}


def error_for(code, details):
    """The most specific BrokerError for a grpc.StatusCode or a code number."""
    if isinstance(code, int):
        code = _STATUS_CODES_BY_NUMBER.get(code, grpc.StatusCode.UNKNOWN)
    return _ERROR_CLASSES.get(code, BrokerError)(code, details)


def error_from_rpc(rpc_error):
    """The BrokerError for a grpc.RpcError raised by a stub call."""
    return error_for(rpc_error.code(), rpc_error.details())
