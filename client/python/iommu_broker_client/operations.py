"""Request builders shared by Broker's data-path methods and Broker.batch.

Each builder takes the same arguments as the Broker method of the same name
and returns the request message, so a batch reads like the calls it replaces:

    broker.batch([map_op("dev", phys=0x1000, size=0x1000),
                  translate_op("dev", iova=0x9000, size=8, access="read")])

Enums are accepted as the proto's numbers or as the part of the name after
the prefix, in any case: policy "fast" is POLICY_FAST, access "read" is
ACCESS_READ, bypass "prefer" is BYPASS_MODE_PREFER, page size "2m" is
PAGE_SIZE_2M.
"""

from iommu_broker.v1 import iommu_broker_pb2 as pb


def enum_value(enum, prefix, value):
    """The number of `value` (a number, or a name without `prefix`) in `enum`."""
    if isinstance(value, int):
        return value
    name = f"{prefix}_{value.upper()}"
    try:
        return enum.Value(name)
    except ValueError:
        choices = ", ".join(
            repr(known[len(prefix) + 1:].lower())
            for known in enum.keys()
            if not known.endswith("_UNSPECIFIED"))
        raise ValueError(
            f"unknown {prefix.lower()} {value!r}; expected one of {choices}") from None


def policy_value(policy):
    """The Policy number of "paranoid", "fast", "pt" or a Policy number."""
    return enum_value(pb.Policy, "POLICY", policy)


def page_size_value(page_size):
    """The PageSize number of "4k", "2m", "1g" or a PageSize number."""
    return enum_value(pb.PageSize, "PAGE_SIZE", page_size)


def map_op(device_id, phys, size, *, read=True, write=True, iova=None, bypass=None):
    """A MapRequest: map [phys, phys + size) for the device's DMA.

    Args:
        device_id: the attached device that will do the DMA.
        phys: granule-aligned physical address.
        size: granule-aligned size in bytes.
        read, write: the device may read / write the memory; the default is
            both (DMA_BIDIRECTIONAL). At least one is required.
        iova: map exactly there (virtio-iommu / VFIO style); None lets the
            broker choose (DMA-API style).
        bypass: "none", "prefer" or "require"; None does not ask for bypass.
    """
    request = pb.MapRequest(device_id=device_id, phys=phys, size=size,
                            permissions=pb.Permissions(read=read, write=write))
    if iova is not None:
        request.iova = iova
    if bypass is not None:
        request.bypass = enum_value(pb.BypassMode, "BYPASS_MODE", bypass)
    return request


def unmap_op(device_id, iova, size):
    """An UnmapRequest: remove every mapping wholly inside [iova, iova + size)."""
    return pb.UnmapRequest(device_id=device_id, iova=iova, size=size)


def translate_op(device_id, iova, size, access):
    """A TranslateRequest: what the device's DMA of `size` bytes at `iova` sees.

    `access` is "read" (the device reads memory) or "write".
    """
    return pb.TranslateRequest(device_id=device_id, iova=iova, size=size,
                               access=enum_value(pb.Access, "ACCESS", access))


def flush_op(domain_id):
    """A FlushRequest: run the domain's pending batch invalidation now."""
    return pb.FlushRequest(domain_id=domain_id)


# Which Operation field holds each request type, and which result field
# answers it.
_OPERATION_FIELDS = {
    pb.MapRequest: "map",
    pb.UnmapRequest: "unmap",
    pb.TranslateRequest: "translate",
    pb.FlushRequest: "flush",
}


def operation(request):
    """Wraps a data-path request (or passes an Operation) for a BatchRequest."""
    if isinstance(request, pb.Operation):
        return request
    field = _OPERATION_FIELDS.get(type(request))
    if field is None:
        raise TypeError(
            f"a batch takes MapRequest, UnmapRequest, TranslateRequest, FlushRequest "
            f"or Operation messages, not {type(request).__name__}")
    return pb.Operation(**{field: request})
