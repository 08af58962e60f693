"""Broker: one method per iommu_broker.v1.IommuBroker RPC."""

import os

import grpc

from iommu_broker.v1 import iommu_broker_pb2 as pb
from iommu_broker.v1 import iommu_broker_pb2_grpc as pb_grpc

from .connection import TOKEN_FILE_ENV, make_channel, read_token_file
from .errors import error_for, error_from_rpc
from .operations import (flush_op, map_op, operation, page_size_value, policy_value,
                         translate_op, unmap_op)

DEFAULT_TARGET = "127.0.0.1:50051"
TARGET_ENV = "IOMMU_BROKER_TARGET"
# Long enough for a paranoid domain's flushes on a loaded host; a deadline
# exists only so that a hung broker cannot hang its client forever.
DEFAULT_TIMEOUT = 30.0
# The broker's default limit of operations per Batch message.
DEFAULT_BATCH_CHUNK = 4096


class EventWatch:
    """An open WatchEvents stream.

    Iterate it for Event messages (each has a `fault` or an `invalidation`,
    see Event.WhichOneof("event")). Iteration ends when the broker shuts down
    or after cancel(); cancel() may be called from another thread to end a
    blocked iteration. As a context manager it cancels on exit.
    """

    def __init__(self, call):
        self._call = call
        self._cancelled = False

    def __iter__(self):
        return self

    def __next__(self):
        try:
            return next(self._call)
        except grpc.RpcError as error:
            if self._cancelled and error.code() == grpc.StatusCode.CANCELLED:
                raise StopIteration from None
            raise error_from_rpc(error) from error

    def cancel(self):
        """Ends the stream; iteration stops instead of raising."""
        self._cancelled = True
        self._call.cancel()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.cancel()


class Broker:
    """A connection to iommu-brokerd.

    Every method raises a BrokerError subclass (see errors.py) when the
    broker refuses the call; a refused call changes nothing. Use it as a
    context manager to close the channel:

        with Broker("unix:/run/iommu-broker/broker.sock") as broker:
            broker.create_domain("vm1", "fast")
    """

    def __init__(self, target=None, timeout=DEFAULT_TIMEOUT, *, tls=None, token=None,
                 token_file=None):
        """Opens a channel (lazily: the first call connects).

        Args:
            target: "host:port" or "unix:/path"; None takes the
                IOMMU_BROKER_TARGET environment variable, else 127.0.0.1:50051.
            timeout: deadline in seconds for each call (a Batch as a whole;
                WatchEvents has none); None for no deadline.
            tls: a TlsFiles (connection.py) for TLS, mutual with a client
                certificate and key; None for plaintext, as a broker on
                loopback or a Unix socket serves.
            token: a bearer token, sent as `authorization: Bearer <token>`
                on every call, streams included.
            token_file: when `token` is None, a file whose first line is the
                token; None takes the IOMMU_BROKER_TOKEN_FILE environment
                variable, else no token is sent.

        Raises:
            ValueError: an invalid token (the message never holds it), or a
                client certificate without its key.
            OSError: a TLS or token file cannot be read.
        """
        self.target = target or os.environ.get(TARGET_ENV) or DEFAULT_TARGET
        self._timeout = timeout
        if token is None:
            token_file = token_file or os.environ.get(TOKEN_FILE_ENV)
            if token_file:
                token = read_token_file(token_file)
        self._channel = make_channel(self.target, tls=tls, token=token)
        self._stub = pb_grpc.IommuBrokerStub(self._channel)

    def close(self):
        """Closes the channel, cancelling any open streams."""
        self._channel.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()

    def _call(self, method, request):
        try:
            return method(request, timeout=self._timeout)
        except grpc.RpcError as error:
            raise error_from_rpc(error) from error

    # Domains ---------------------------------------------------------------

    def create_domain(self, domain_id, policy, **spec_fields):
        """Creates a domain and returns it (a Domain, every default filled in).

        Args:
            domain_id: 1-256 printable ASCII bytes without spaces.
            policy: "paranoid", "fast" or "pt".
            **spec_fields: any other DomainSpec field, e.g. aperture_first,
                page_sizes=["4k", "2m"], flush_queue_capacity, max_mappings,
                reserved_regions={"regions": [...]}; omitted ones take the
                broker's defaults.
        """
        if "page_sizes" in spec_fields:
            spec_fields["page_sizes"] = [page_size_value(size)
                                         for size in spec_fields["page_sizes"]]
        spec = pb.DomainSpec(id=domain_id, policy=policy_value(policy), **spec_fields)
        return self._call(self._stub.CreateDomain, pb.CreateDomainRequest(domain=spec))

    def destroy_domain(self, domain_id, force=False):
        """Destroys a domain; returns a DestroyDomainResponse.

        Without `force` a domain with attached devices is refused
        (FailedPrecondition); with it they are detached and listed. The reply
        also reports the mappings still live (`leaked`).
        """
        request = pb.DestroyDomainRequest(domain_id=domain_id, force=force)
        return self._call(self._stub.DestroyDomain, request)

    def get_domain(self, domain_id):
        """The Domain: its spec, attached devices and counters."""
        return self._call(self._stub.GetDomain, pb.GetDomainRequest(domain_id=domain_id))

    def list_domains(self):
        """Every Domain, as a list sorted by id."""
        return list(self._call(self._stub.ListDomains, pb.ListDomainsRequest()).domains)

    def set_domain_policy(self, domain_id, policy):
        """Switches the domain to `policy` ("paranoid", "fast", "pt"); returns the Domain.

        Switching to paranoid drains the flush queue before returning.
        """
        request = pb.SetDomainPolicyRequest(domain_id=domain_id, policy=policy_value(policy))
        return self._call(self._stub.SetDomainPolicy, request)

    # Devices ---------------------------------------------------------------

    def register_device(self, device_id, dma_mask_bits=None, allow_bypass=False):
        """Registers a device (detached); returns the Device with its requester_id.

        Args:
            device_id: e.g. a PCI address "0000:3b:00.0".
            dma_mask_bits: address bits the device drives, 12-64; None for 64.
            allow_bypass: the operator's consent to bypass on fast domains.
        """
        spec = pb.DeviceSpec(id=device_id, dma_mask_bits=dma_mask_bits,
                             allow_bypass=allow_bypass)
        return self._call(self._stub.RegisterDevice, pb.RegisterDeviceRequest(device=spec))

    def update_device(self, device_id, dma_mask_bits=None, allow_bypass=None):
        """Changes what is given (None keeps it); returns the Device.

        dma_mask_bits may change only while the device is detached
        (FailedPrecondition otherwise).
        """
        request = pb.UpdateDeviceRequest(device_id=device_id, dma_mask_bits=dma_mask_bits,
                                         allow_bypass=allow_bypass)
        return self._call(self._stub.UpdateDevice, request)

    def unregister_device(self, device_id):
        """Detaches (if attached) and forgets a device; returns an UnregisterDeviceResponse."""
        request = pb.UnregisterDeviceRequest(device_id=device_id)
        return self._call(self._stub.UnregisterDevice, request)

    def attach_device(self, device_id, domain_id):
        """Attaches the device to the domain, moving it if attached elsewhere.

        Returns an AttachDeviceResponse naming the domain left, if any, and
        the mappings the device left there.
        """
        request = pb.AttachDeviceRequest(device_id=device_id, domain_id=domain_id)
        return self._call(self._stub.AttachDevice, request)

    def detach_device(self, device_id):
        """Detaches the device; returns a DetachDeviceResponse (domain, leaks)."""
        request = pb.DetachDeviceRequest(device_id=device_id)
        return self._call(self._stub.DetachDevice, request)

    def get_device(self, device_id):
        """The Device: its spec, domain, requester id and DMA-API debug counts."""
        return self._call(self._stub.GetDevice, pb.GetDeviceRequest(device_id=device_id))

    def list_devices(self, domain_id=""):
        """Every Device (only those attached to `domain_id` if given), sorted by id."""
        request = pb.ListDevicesRequest(domain_id=domain_id)
        return list(self._call(self._stub.ListDevices, request).devices)

    # Data path -------------------------------------------------------------

    def map(self, device_id, phys, size, *, read=True, write=True, iova=None, bypass=None):
        """Maps [phys, phys + size) for the device's DMA; returns a MapResponse.

        The IOVA is in the reply's `iova`. Arguments as for operations.map_op:
        read/write default to both, iova=None lets the broker choose, bypass
        is "none", "prefer" or "require".
        """
        request = map_op(device_id, phys, size, read=read, write=write, iova=iova,
                         bypass=bypass)
        return self._call(self._stub.Map, request)

    def unmap(self, device_id, iova, size):
        """Removes every mapping wholly inside [iova, iova + size); returns an UnmapResponse.

        A range with nothing mapped succeeds with 0 bytes; one that would
        split a mapping raises FailedPrecondition and removes nothing.
        """
        return self._call(self._stub.Unmap, unmap_op(device_id, iova, size))

    def translate(self, device_id, iova, size, access):
        """What the device's DMA sees; returns a TranslateResponse.

        `access` is "read" or "write". A fault is a result, not an error:
        the reply's `fault` is set (check response.HasField("fault")).
        """
        return self._call(self._stub.Translate, translate_op(device_id, iova, size, access))

    def flush(self, domain_id):
        """Runs the domain's pending batch invalidation now."""
        self._call(self._stub.Flush, flush_op(domain_id))

    def batch(self, operations, *, chunk_size=DEFAULT_BATCH_CHUNK):
        """Runs data-path operations in order over one Batch stream.

        Args:
            operations: MapRequest, UnmapRequest, TranslateRequest or
                FlushRequest messages (build them with map_op, unmap_op,
                translate_op, flush_op) or Operation messages.
            chunk_size: operations per BatchRequest message; must not exceed
                the broker's max_batch_operations. The messages are sent
                without waiting for replies.

        Returns:
            One entry per operation, in order: the operation's reply
            (MapResponse, UnmapResponse, TranslateResponse; None for a flush),
            or, for an operation that failed, its BrokerError (returned, not
            raised: one failing operation fails alone).

        Raises:
            BrokerError: the stream itself failed, e.g. ResourceExhausted for
                a message above the broker's limit or Unavailable while the
                broker drains.
        """
        ops = [operation(request) for request in operations]
        if not ops:
            return []
        requests = [pb.BatchRequest(operations=ops[start:start + chunk_size])
                    for start in range(0, len(ops), chunk_size)]
        try:
            responses = self._stub.Batch(iter(requests), timeout=self._timeout)
            results = [result for response in responses for result in response.results]
        except grpc.RpcError as error:
            raise error_from_rpc(error) from error
        return [_batch_outcome(result) for result in results]

    # Events and stats ------------------------------------------------------

    def watch_events(self, domain_id="", device_id="", *, faults=True, invalidations=True):
        """Subscribes to faults and/or invalidations; returns an EventWatch.

        Args:
            domain_id: only this domain's events; "" for every domain.
            device_id: only this device's faults and device-scope
                invalidations, plus its domain's range and domain-scope ones.
            faults, invalidations: the kinds to deliver (at least one).

        The subscription exists when this returns: no later event is missed.
        Iterate the EventWatch for Event messages; cancel() or leaving its
        `with` block ends it.
        """
        request = pb.WatchEventsRequest(domain_id=domain_id, device_id=device_id,
                                        faults=faults, invalidations=invalidations)
        call = self._stub.WatchEvents(request)
        # The broker sends headers once the subscription exists, or ends the
        # call at once if it refuses it.
        call.initial_metadata()
        if call.done() and call.code() != grpc.StatusCode.OK:
            raise error_for(call.code(), call.details())
        return EventWatch(call)

    def get_stats(self, domain_id="", device_id=""):
        """Counters per domain, per device and per IOMMU unit (a GetStatsResponse).

        `domain_id` / `device_id` narrow it (NotFound if unknown).
        """
        request = pb.GetStatsRequest(domain_id=domain_id, device_id=device_id)
        return self._call(self._stub.GetStats, request)


def _batch_outcome(result):
    """An OperationResult as batch() reports it: the reply, None, or a BrokerError."""
    if result.status.code != 0:
        return error_for(result.status.code, result.status.message)
    reply_field = result.WhichOneof("result")
    return None if reply_field == "flush" else getattr(result, reply_field)
