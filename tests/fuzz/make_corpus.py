#!/usr/bin/python3
"""Writes the fuzzers' seed corpora, tests/fuzz/corpus/<fuzzer>/.

The seeds are committed; run this again after changing a fuzzer's input
format or the API, then commit what changed:

    /usr/bin/python3 tests/fuzz/make_corpus.py

It needs protoc and Debian's python3-protobuf (scripts/install-deps.sh
installs both; a pyenv python3 does not see python3-protobuf). It compiles
protos/ into a temporary directory and writes:

  iommu_ops_fuzzer/      pseudo-random bytes from a fixed seed, one file per
                         scenario (the first byte), short and long (about 100
                         operations, as many as the fuzzer runs): every byte
                         string is a valid operation sequence, so random
                         seeds are as good as any.
  broker_service_fuzzer/ records [kind][length][request in wire format]
                         (kinds as in broker_service_fuzzer.cc's kRequests):
                         data-path traffic on each policy, admin calls, a
                         Batch, and numeric extremes.
  broker_stream_fuzzer/  records [kind][length][plan][...] (as in
                         broker_stream_fuzzer.cc): watches of each kind, and
                         refused ones; links that acknowledge, that do not,
                         and refused ones; Batch streams ended in each way,
                         held ones filling the stream limit.
  broker_config_fuzzer/  [0 = text format | 1 = JSON][config file]: the
                         shipped default configuration in both syntaxes, a
                         minimal one, and one that validation refuses.
"""

import importlib
import os
import random
import shutil
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CORPUS = os.path.join(ROOT, "tests", "fuzz", "corpus")

# broker_service_fuzzer.cc's kRequests, in order.
KINDS = [
    "CreateDomain", "DestroyDomain", "GetDomain", "ListDomains", "SetDomainPolicy",
    "RegisterDevice", "UpdateDevice", "UnregisterDevice", "AttachDevice", "DetachDevice",
    "GetDevice", "ListDevices", "Map", "Unmap", "Translate", "Flush", "GetStats", "Batch",
]
# broker_stream_fuzzer.cc's record kinds, in order, and its steps.
STREAM_KINDS = ["watch", "link", "batch"]
LINK_STEPS = ["write", "read", "ack", "unmap"]
BATCH_STEPS = ["write", "read"]
BATCH_ENDS = ["writes_done", "cancel", "abandon", "hold"]
DEVICES = ["0", "1", "2", "3"]
PAGE = 4096
TOP = 2**64 - 1


def compile_protos(out_dir):
    protos = os.path.join(ROOT, "protos")
    subprocess.run(
        ["protoc", f"--proto_path={protos}", f"--python_out={out_dir}",
         os.path.join(protos, "iommu_broker", "v1", "iommu_broker.proto"),
         os.path.join(protos, "iommu_broker", "v1", "config.proto")],
        check=True)
    sys.path.insert(0, out_dir)
    return (importlib.import_module("iommu_broker.v1.iommu_broker_pb2"),
            importlib.import_module("iommu_broker.v1.config_pb2"))


def write(fuzzer, name, data):
    path = os.path.join(CORPUS, fuzzer, name)
    with open(path, "wb") as out:
        out.write(data)


def records(*requests):
    data = b""
    for kind, message in requests:
        payload = message.SerializeToString()
        assert len(payload) < 256, (kind, len(payload))
        data += bytes([KINDS.index(kind), len(payload)]) + payload
    return data


def service_seeds(api):
    from google.protobuf import duration_pb2

    rw = api.Permissions(read=True, write=True)
    seeds = {}
    for domain, device in (("p", "0"), ("f", "1"), ("t", "2")):
        seeds[f"data_path_{domain}"] = records(
            ("Map", api.MapRequest(device_id=device, phys=0x200000, size=0x200000, permissions=rw)),
            ("Map", api.MapRequest(device_id=device, phys=PAGE, size=3 * PAGE, iova=0x10000,
                                   permissions=api.Permissions(read=True))),
            ("Translate", api.TranslateRequest(device_id=device, iova=0x10000, size=PAGE,
                                               access=api.ACCESS_WRITE)),
            ("Unmap", api.UnmapRequest(device_id=device, iova=0x10000, size=PAGE)),
            ("Unmap", api.UnmapRequest(device_id=device, iova=0x10000, size=3 * PAGE)),
            ("Translate", api.TranslateRequest(device_id=device, iova=0x10000, size=1,
                                               access=api.ACCESS_READ)),
            ("Map", api.MapRequest(device_id=device, phys=0, size=PAGE, permissions=rw,
                                   bypass=api.BYPASS_MODE_PREFER)),
            ("Flush", api.FlushRequest(domain_id=domain)),
        )
    seeds["admin"] = records(
        ("CreateDomain", api.CreateDomainRequest(domain=api.DomainSpec(
            id="x", policy=api.POLICY_FAST, aperture_first=PAGE, aperture_last=2**32 - 1,
            page_sizes=[api.PAGE_SIZE_4K, api.PAGE_SIZE_2M], iotlb_sets=16, iotlb_ways=4,
            flush_queue_capacity=4, identity_first=True, max_mappings=8,
            reserved_regions=api.ReservedRegionList(
                regions=[api.ReservedRegion(start=0x100000, size=PAGE, name="msi")])))),
        ("RegisterDevice", api.RegisterDeviceRequest(
            device=api.DeviceSpec(id="9", dma_mask_bits=36, allow_bypass=True))),
        ("AttachDevice", api.AttachDeviceRequest(device_id="9", domain_id="x")),
        ("Map", api.MapRequest(device_id="9", phys=0x200000, size=PAGE, permissions=rw)),
        ("AttachDevice", api.AttachDeviceRequest(device_id="3", domain_id="x")),
        ("SetDomainPolicy", api.SetDomainPolicyRequest(domain_id="f", policy=api.POLICY_PARANOID)),
        ("UpdateDevice", api.UpdateDeviceRequest(device_id="3", dma_mask_bits=48,
                                                 allow_bypass=False)),
        ("GetDomain", api.GetDomainRequest(domain_id="x")),
        ("ListDomains", api.ListDomainsRequest()),
        ("GetDevice", api.GetDeviceRequest(device_id="9")),
        ("ListDevices", api.ListDevicesRequest(domain_id="x")),
        ("GetStats", api.GetStatsRequest(domain_id="x", device_id="9")),
        ("DetachDevice", api.DetachDeviceRequest(device_id="9")),
        ("DestroyDomain", api.DestroyDomainRequest(domain_id="x", force=True)),
        ("UnregisterDevice", api.UnregisterDeviceRequest(device_id="9")),
    )
    seeds["batch"] = records(("Batch", api.BatchRequest(operations=[
        api.Operation(map=api.MapRequest(device_id="1", phys=0x400000, size=PAGE, permissions=rw)),
        api.Operation(translate=api.TranslateRequest(device_id="1", iova=0xfffff000, size=PAGE,
                                                     access=api.ACCESS_READ)),
        api.Operation(unmap=api.UnmapRequest(device_id="1", iova=0xfffff000, size=PAGE)),
        api.Operation(flush=api.FlushRequest(domain_id="f")),
        api.Operation(),
    ])))
    seeds["extremes"] = records(
        ("Map", api.MapRequest(device_id="0", phys=TOP - PAGE + 1, size=PAGE, permissions=rw)),
        ("Map", api.MapRequest(device_id="0", phys=0, size=TOP - PAGE + 1, permissions=rw)),
        ("Map", api.MapRequest(device_id="0", phys=0, size=PAGE, iova=TOP - PAGE + 1,
                               permissions=rw)),
        ("Map", api.MapRequest(device_id="1", phys=1, size=1, iova=2**63, permissions=rw)),
        ("Unmap", api.UnmapRequest(device_id="0", iova=TOP - PAGE + 1, size=2 * PAGE)),
        ("Unmap", api.UnmapRequest(device_id="1", iova=2**63, size=TOP)),
        ("Translate", api.TranslateRequest(device_id="2", iova=TOP, size=2,
                                           access=api.ACCESS_READ)),
        ("Translate", api.TranslateRequest(device_id="0", iova=0, size=0, access=5)),
        ("CreateDomain", api.CreateDomainRequest(domain=api.DomainSpec(
            id="y", policy=api.POLICY_PT, aperture_first=0, aperture_last=TOP,
            max_mappings=TOP, bypass_window_base=2**63, iommu_unit=2**32 - 1,
            flush_queue_timeout=duration_pb2.Duration(seconds=2**63 - 1, nanos=-1)))),
        ("RegisterDevice", api.RegisterDeviceRequest(device=api.DeviceSpec(id="z",
                                                                           dma_mask_bits=2**32 - 1))),
    )
    return seeds


def stream_record(kind, plan, body):
    payload = bytes([plan]) + body
    assert len(payload) < 256, (kind, len(payload))
    return bytes([STREAM_KINDS.index(kind), len(payload)]) + payload


def step(steps, op, data=b""):
    if not isinstance(data, bytes):
        data = data.SerializeToString()
    assert len(data) < 256, (op, len(data))
    return bytes([steps.index(op), len(data)]) + data


def watch(request, fault=False, unmap=False, on="0", reads=0):
    plan = int(fault) | int(unmap) << 1 | DEVICES.index(on) << 2 | reads << 4
    return stream_record("watch", plan, request.SerializeToString())


def link(steps, cancel=False):
    return stream_record("link", int(cancel), b"".join(step(LINK_STEPS, *s) for s in steps))


def batch(steps, end):
    return stream_record("batch", BATCH_ENDS.index(end),
                         b"".join(step(BATCH_STEPS, *s) for s in steps))


def stream_seeds(api):
    rw = api.Permissions(read=True, write=True)

    def link_to(device):
        return api.DeviceIotlbRequest(link=api.LinkDeviceIotlb(device_id=device))

    def ack(sequence):
        return api.DeviceIotlbRequest(acknowledged_sequence=sequence)

    def page(device, index):  # the bytes of a link's unmap step
        return bytes([DEVICES.index(device), index])

    def ops(*operations):
        return api.BatchRequest(operations=list(operations))

    def map_op(device, iova):
        return api.Operation(map=api.MapRequest(device_id=device, phys=iova, size=PAGE,
                                                iova=iova, permissions=rw))

    def unmap_op(device, iova):
        return api.Operation(unmap=api.UnmapRequest(device_id=device, iova=iova, size=PAGE))

    def translate_op(device, iova):
        return api.Operation(translate=api.TranslateRequest(device_id=device, iova=iova, size=PAGE,
                                                            access=api.ACCESS_WRITE))

    flush_f = api.Operation(flush=api.FlushRequest(domain_id="f"))
    traffic = ops(map_op("0", 0x10000), translate_op("0", 0x10000), unmap_op("0", 0x10000),
                  map_op("1", 0x20000), unmap_op("1", 0x20000), flush_f)
    return {
        "watch_faults": watch(api.WatchEventsRequest(domain_id="p", faults=True),
                              fault=True, on="0", reads=1),
        "watch_invalidations": watch(api.WatchEventsRequest(domain_id="f", invalidations=True),
                                     unmap=True, on="1", reads=3),
        "watch_device": watch(api.WatchEventsRequest(device_id="2", faults=True,
                                                     invalidations=True),
                              fault=True, unmap=True, on="2", reads=3),
        "watch_all_detached": watch(api.WatchEventsRequest(faults=True, invalidations=True),
                                    fault=True, unmap=True, on="3", reads=2),
        "watch_refused": watch(api.WatchEventsRequest(domain_id="p"), fault=True)
                         + watch(api.WatchEventsRequest(domain_id="x", faults=True))
                         + watch(api.WatchEventsRequest(device_id="9", invalidations=True)),
        "link_paranoid_acked": link([("write", link_to("0")), ("read",), ("unmap", page("0", 1)),
                                     ("read",), ("ack",), ("unmap", page("0", 2)), ("read",),
                                     ("ack",)]),
        # Reads for longer than the acknowledgement timeout: the cache is cut off.
        "link_paranoid_silent": link([("write", link_to("0")), ("read",), ("unmap", page("0", 3))]
                                     + [("read",)] * 10),
        "link_cancelled": link([("write", link_to("0")), ("unmap", page("0", 4)), ("read",)],
                               cancel=True),
        "link_fast": link([("write", link_to("1")), ("read",), ("unmap", page("1", 1)),
                           ("unmap", page("1", 2)), ("read",), ("ack",), ("write", ack(9))]),
        "link_refused": link([("write", ack(1))])
                        + link([("write", link_to("9"))])
                        + link([("write", link_to("2")), ("write", link_to("2"))], cancel=True),
        "batch_writes_done": batch([("write", traffic), ("read",), ("write", traffic),
                                    ("write", ops())], "writes_done"),
        "batch_cancelled": batch([("write", traffic), ("write", traffic)], "cancel"),
        "batch_abandoned": batch([("write", traffic), ("read",), ("write", traffic)], "abandon"),
        "batch_over_limit": batch([("write", ops(*[translate_op("2", 0x1000)] * 9)), ("read",)],
                                  "writes_done"),
        "batch_held": b"".join(batch([("write", ops(map_op("0", 0x30000 + i * PAGE)))], "hold")
                               for i in range(3))
                      + watch(api.WatchEventsRequest(faults=True), reads=1)
                      + batch([("write", traffic), ("read",)], "writes_done"),
    }


def config_seeds(config_pb2):
    from google.protobuf import json_format, text_format

    with open(os.path.join(ROOT, "deploy", "iommu-brokerd.textproto")) as default_file:
        default_text = default_file.read()
    default = text_format.Parse(default_text, config_pb2.BrokerConfig())
    refused = text_format.Parse(
        'engine { iommu_units: 65 physical_memory_bytes: 4097 } '
        'limits { max_batch_operations: 0 } shutdown_grace_period { seconds: -1 } '
        'domains { id: "a" policy: POLICY_FAST identity_first: true aperture_last: 4095 }',
        config_pb2.BrokerConfig())
    return {
        "default_text": b"\x00" + default_text.encode(),
        "default_json": b"\x01" + json_format.MessageToJson(default).encode(),
        "minimal_text": b"\x00" + b'metrics_listen_address: "none"',
        "refused_text": b"\x00" + text_format.MessageToString(refused).encode(),
        "refused_json": b"\x01" + json_format.MessageToJson(refused).encode(),
    }


def main():
    work = tempfile.mkdtemp()
    try:
        api, config_pb2 = compile_protos(work)
        for fuzzer in ("iommu_ops_fuzzer", "broker_service_fuzzer", "broker_stream_fuzzer",
                       "broker_config_fuzzer"):
            shutil.rmtree(os.path.join(CORPUS, fuzzer), ignore_errors=True)
            os.makedirs(os.path.join(CORPUS, fuzzer))
        rng = random.Random(0x5eed)
        for scenario, name in enumerate(("paranoid", "fast", "pt", "fast_identity")):
            for length in (192, 768):
                write("iommu_ops_fuzzer", f"{name}_{length}",
                      bytes([scenario]) + bytes(rng.randrange(256) for _ in range(length - 1)))
        for name, data in service_seeds(api).items():
            write("broker_service_fuzzer", name, data)
        for name, data in stream_seeds(api).items():
            write("broker_stream_fuzzer", name, data)
        for name, data in config_seeds(config_pb2).items():
            write("broker_config_fuzzer", name, data)
    finally:
        shutil.rmtree(work)


if __name__ == "__main__":
    main()
