"""A Python client for iommu-brokerd (the iommu_broker.v1 gRPC API).

    from iommu_broker_client import Broker, NotFound

    with Broker("unix:/run/iommu-broker/broker.sock",
                token_file="/run/secrets/broker-token") as broker:
        broker.create_domain("vm1", "fast")
        broker.register_device("0000:3b:00.0")
        broker.attach_device("0000:3b:00.0", "vm1")
        iova = broker.map("0000:3b:00.0", phys=0x40000000, size=0x200000).iova

Replies are the API's protobuf messages (iommu_broker.v1.iommu_broker_pb2,
re-exported here as `pb`); failures raise BrokerError subclasses.
"""

from iommu_broker.v1 import iommu_broker_pb2 as pb

from .broker import DEFAULT_TARGET, TARGET_ENV, Broker, EventWatch
from .connection import TOKEN_FILE_ENV, TlsFiles, make_channel, read_token_file
from .errors import (AlreadyExists, BrokerError, FailedPrecondition, InvalidArgument, NotFound,
                     OutOfRange, PermissionDenied, ResourceExhausted, Unavailable)
from .operations import flush_op, map_op, translate_op, unmap_op

__all__ = [
    "pb",
    "Broker", "EventWatch", "DEFAULT_TARGET", "TARGET_ENV",
    "TlsFiles", "TOKEN_FILE_ENV", "read_token_file", "make_channel",
    "map_op", "unmap_op", "translate_op", "flush_op",
    "BrokerError", "InvalidArgument", "NotFound", "AlreadyExists", "FailedPrecondition",
    "OutOfRange", "PermissionDenied", "ResourceExhausted", "Unavailable",
]
