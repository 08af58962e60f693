"""Tests of iommu_broker_client against the real iommu-brokerd.

The daemon binary comes from IOMMU_BROKERD_PATH (ctest sets it). Each daemon
listens on a Unix socket in a fresh temporary directory, so concurrent runs
never race for a port. Every wait is bounded only so that a broken daemon
cannot hang the test; no assertion depends on how long anything takes.
"""

import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import unittest
from unittest import mock

import grpc

import iommu_broker_client as client
from iommu_broker_client import pb

# Generous: under AddressSanitizer on a busy 2-core machine start-up can
# take seconds. Only a hung daemon ever reaches these.
START_ATTEMPTS = 300  # x POLL_SECONDS
POLL_SECONDS = 0.2
EXIT_TIMEOUT_SECONDS = 60
EVENT_TIMEOUT_SECONDS = 60

# A batch limit small enough that the tests can exceed it cheaply.
MAX_BATCH_OPERATIONS = 4
CONFIG = f"""
shutdown_grace_period {{ seconds: 5 }}
limits {{ max_batch_operations: {MAX_BATCH_OPERATIONS} }}
"""

PAGE = 0x1000
UNMAPPED_IOVA = 0x5000
PHYSICAL_MEMORY = 16 << 30  # the broker's default


class Daemon:
    """One iommu-brokerd child process serving on a private Unix socket."""

    def __init__(self):
        binary = os.environ.get("IOMMU_BROKERD_PATH")
        if not binary:
            raise unittest.SkipTest("IOMMU_BROKERD_PATH is not set (run through ctest)")
        # Under /tmp: a Unix socket path must fit in 108 bytes.
        self.dir = tempfile.mkdtemp(prefix="brokerd_py.", dir="/tmp")
        self.socket_path = os.path.join(self.dir, "broker.sock")
        self.target = f"unix:{self.socket_path}"
        config_path = os.path.join(self.dir, "broker.textproto")
        with open(config_path, "w") as config:
            config.write(CONFIG)
        self._stderr_path = os.path.join(self.dir, "stderr.log")
        with open(self._stderr_path, "w") as stderr:
            self.process = subprocess.Popen(
                [binary, f"--listen={self.target}", "--metrics_listen=none",
                 f"--config={config_path}"],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr)

    def log(self):
        with open(self._stderr_path) as stderr:
            return stderr.read()

    def wait_until_serving(self, broker):
        """Returns once `broker` gets an answer; fails if the daemon dies first."""
        # Until the socket exists every call fails and gRPC backs off between
        # connection attempts, so first wait for the socket itself.
        for _ in range(START_ATTEMPTS):
            if self.process.poll() is not None:
                raise AssertionError(
                    f"iommu-brokerd exited with {self.process.returncode}:\n{self.log()}")
            if os.path.exists(self.socket_path):
                try:
                    broker.list_domains()
                    return
                except client.Unavailable:
                    pass
            time.sleep(POLL_SECONDS)
        raise AssertionError(f"iommu-brokerd never answered:\n{self.log()}")

    def terminate(self):
        """SIGTERMs the daemon; returns its exit status (None if it hangs)."""
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=EXIT_TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired:
            return None

    def cleanup(self):
        """Kills the daemon if it still runs and removes its directory."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


def start_daemon(add_cleanup):
    """Starts a daemon; returns it and a connected Broker, both cleaned up by `add_cleanup`."""
    daemon = Daemon()
    add_cleanup(daemon.cleanup)
    broker = client.Broker(daemon.target)
    add_cleanup(broker.close)
    daemon.wait_until_serving(broker)
    return daemon, broker


def next_event(watch):
    """The next event of `watch`, or None once its stream has ended."""
    # A watch that stays silent is cancelled, so that a missing event fails
    # the test instead of hanging it.
    timed_out = threading.Event()

    def give_up():
        timed_out.set()
        watch.cancel()

    timer = threading.Timer(EVENT_TIMEOUT_SECONDS, give_up)
    timer.start()
    try:
        event = next(watch, None)
    finally:
        timer.cancel()
    if timed_out.is_set():
        raise AssertionError("the watch stream neither delivered an event nor ended")
    return event


class BrokerTest(unittest.TestCase):
    """Every Broker method against one daemon; each test uses its own ids."""

    @classmethod
    def setUpClass(cls):
        cls.daemon, cls.broker = start_daemon(cls.addClassCleanup)

    def setUp(self):
        # Ids derived from the test name keep the tests independent although
        # they share a daemon.
        self.domain_id = f"{self._testMethodName}.dom"
        self.device_id = f"{self._testMethodName}.dev"

    def attached_device(self, policy="fast"):
        """Creates this test's domain and attaches this test's device to it."""
        self.broker.create_domain(self.domain_id, policy)
        self.broker.register_device(self.device_id)
        self.broker.attach_device(self.device_id, self.domain_id)

    def assertRaisesBrokerError(self, error_class, code, call, *args, **kwargs):
        with self.assertRaises(error_class) as raised:
            call(*args, **kwargs)
        self.assertIsInstance(raised.exception, client.BrokerError)
        self.assertEqual(raised.exception.code, code)
        self.assertTrue(raised.exception.details, "the broker says what was wrong")
        return raised.exception

    # Domains -----------------------------------------------------------------

    def test_create_domain_fills_in_defaults(self):
        domain = self.broker.create_domain(self.domain_id, "fast", page_sizes=["4k", "2m"])
        self.assertEqual(domain.spec.id, self.domain_id)
        self.assertEqual(domain.spec.policy, pb.POLICY_FAST)
        self.assertEqual(domain.spec.aperture_first, PAGE)
        self.assertEqual(list(domain.spec.page_sizes), [pb.PAGE_SIZE_4K, pb.PAGE_SIZE_2M])
        self.assertEqual(self.broker.get_domain(self.domain_id), domain)

    def test_list_domains_includes_new_domain(self):
        self.broker.create_domain(self.domain_id, pb.POLICY_PT)
        ids = [domain.spec.id for domain in self.broker.list_domains()]
        self.assertIn(self.domain_id, ids)
        self.assertEqual(ids, sorted(ids))

    def test_set_domain_policy(self):
        self.broker.create_domain(self.domain_id, "fast")
        domain = self.broker.set_domain_policy(self.domain_id, "paranoid")
        self.assertEqual(domain.spec.policy, pb.POLICY_PARANOID)

    def test_destroy_domain_with_devices_needs_force(self):
        self.attached_device()
        self.broker.map(self.device_id, phys=PAGE, size=PAGE)
        self.assertRaisesBrokerError(client.FailedPrecondition,
                                     grpc.StatusCode.FAILED_PRECONDITION,
                                     self.broker.destroy_domain, self.domain_id)
        destroyed = self.broker.destroy_domain(self.domain_id, force=True)
        self.assertEqual(list(destroyed.detached_device_ids), [self.device_id])
        self.assertEqual(destroyed.leaked.mappings, 1)
        self.assertEqual(destroyed.leaked.bytes, PAGE)
        self.assertRaisesBrokerError(client.NotFound, grpc.StatusCode.NOT_FOUND,
                                     self.broker.get_domain, self.domain_id)

    def test_unknown_domain_is_not_found(self):
        error = self.assertRaisesBrokerError(client.NotFound, grpc.StatusCode.NOT_FOUND,
                                             self.broker.get_domain, "no-such-domain")
        self.assertIn("no-such-domain", error.details)

    def test_duplicate_domain_already_exists(self):
        self.broker.create_domain(self.domain_id, "paranoid")
        self.assertRaisesBrokerError(client.AlreadyExists, grpc.StatusCode.ALREADY_EXISTS,
                                     self.broker.create_domain, self.domain_id, "fast")

    def test_unknown_policy_name_is_refused_before_sending(self):
        with self.assertRaises(ValueError):
            self.broker.create_domain(self.domain_id, "lazy")

    # Devices -----------------------------------------------------------------

    def test_device_lifecycle(self):
        self.broker.create_domain(self.domain_id, "fast")
        device = self.broker.register_device(self.device_id, dma_mask_bits=32)
        self.assertEqual(device.spec.dma_mask_bits, 32)
        self.assertFalse(device.spec.allow_bypass)
        self.assertGreater(device.requester_id, 0)

        updated = self.broker.update_device(self.device_id, allow_bypass=True)
        self.assertTrue(updated.spec.allow_bypass)
        self.assertEqual(updated.spec.dma_mask_bits, 32, "unset fields stay")

        self.broker.attach_device(self.device_id, self.domain_id)
        self.assertEqual(self.broker.get_device(self.device_id).domain_id, self.domain_id)
        self.assertEqual([d.spec.id for d in self.broker.list_devices(self.domain_id)],
                         [self.device_id])
        self.assertIn(self.device_id, [d.spec.id for d in self.broker.list_devices()])
        self.assertRaisesBrokerError(client.FailedPrecondition,
                                     grpc.StatusCode.FAILED_PRECONDITION,
                                     self.broker.update_device, self.device_id,
                                     dma_mask_bits=48)

        detached = self.broker.detach_device(self.device_id)
        self.assertEqual(detached.domain_id, self.domain_id)
        self.assertEqual(self.broker.list_devices(self.domain_id), [])

        self.broker.attach_device(self.device_id, self.domain_id)
        unregistered = self.broker.unregister_device(self.device_id)
        self.assertEqual(unregistered.detached_from_domain_id, self.domain_id)
        self.assertRaisesBrokerError(client.NotFound, grpc.StatusCode.NOT_FOUND,
                                     self.broker.get_device, self.device_id)

    def test_attach_moves_device_and_reports_leaks(self):
        self.attached_device()
        self.broker.map(self.device_id, phys=PAGE, size=PAGE)
        other_domain_id = f"{self.domain_id}.2"
        self.broker.create_domain(other_domain_id, "paranoid")
        moved = self.broker.attach_device(self.device_id, other_domain_id)
        self.assertEqual(moved.detached_from_domain_id, self.domain_id)
        self.assertEqual(moved.leaked.mappings, 1)

    def test_duplicate_device_already_exists(self):
        self.broker.register_device(self.device_id)
        self.assertRaisesBrokerError(client.AlreadyExists, grpc.StatusCode.ALREADY_EXISTS,
                                     self.broker.register_device, self.device_id)

    # Data path ---------------------------------------------------------------

    def test_map_translate_unmap_flush(self):
        self.attached_device("fast")
        mapped = self.broker.map(self.device_id, phys=0x40000000, size=2 * PAGE, write=False)
        self.assertEqual(mapped.kind, pb.MAPPING_KIND_TRANSLATED)
        self.assertEqual(mapped.leaves_4k, 2)

        translated = self.broker.translate(self.device_id, iova=mapped.iova, size=2 * PAGE,
                                           access="read")
        self.assertFalse(translated.HasField("fault"))
        self.assertEqual([(s.phys, s.size) for s in translated.segments],
                         [(0x40000000, 2 * PAGE)])
        denied = self.broker.translate(self.device_id, iova=mapped.iova, size=8, access="write")
        self.assertEqual(denied.fault.reason, pb.FAULT_REASON_PERMISSION)

        unmapped = self.broker.unmap(self.device_id, iova=mapped.iova, size=2 * PAGE)
        self.assertEqual(unmapped.bytes_unmapped, 2 * PAGE)
        self.assertEqual(unmapped.mappings_removed, 1)
        self.assertIsNone(self.broker.flush(self.domain_id))
        after_flush = self.broker.translate(self.device_id, iova=mapped.iova, size=8,
                                            access="read")
        self.assertEqual(after_flush.fault.reason, pb.FAULT_REASON_NOT_MAPPED)

    def test_map_at_fixed_iova(self):
        self.attached_device("paranoid")
        mapped = self.broker.map(self.device_id, phys=0x200000, size=0x200000, iova=0x400000)
        self.assertEqual(mapped.iova, 0x400000)
        self.assertEqual(mapped.leaves_2m, 1)
        self.assertRaisesBrokerError(client.AlreadyExists, grpc.StatusCode.ALREADY_EXISTS,
                                     self.broker.map, self.device_id, phys=0, size=PAGE,
                                     iova=0x400000)

    def test_data_path_errors(self):
        self.attached_device("paranoid")
        cases = [
            ("unaligned iova", client.InvalidArgument, grpc.StatusCode.INVALID_ARGUMENT,
             self.broker.map, dict(phys=0, size=PAGE, iova=0x1003)),
            ("beyond physical memory", client.OutOfRange, grpc.StatusCode.OUT_OF_RANGE,
             self.broker.map, dict(phys=PHYSICAL_MEMORY, size=PAGE)),
            ("bypass refused", client.PermissionDenied, grpc.StatusCode.PERMISSION_DENIED,
             self.broker.map, dict(phys=0, size=PAGE, bypass="require")),
            ("unknown device", client.NotFound, grpc.StatusCode.NOT_FOUND,
             self.broker.unmap, dict(device_id="no-such-device", iova=PAGE, size=PAGE)),
        ]
        for name, error_class, code, call, arguments in cases:
            with self.subTest(name):
                arguments.setdefault("device_id", self.device_id)
                self.assertRaisesBrokerError(error_class, code, call, **arguments)

    def test_unmap_that_would_split_fails_and_removes_nothing(self):
        self.attached_device("paranoid")
        mapped = self.broker.map(self.device_id, phys=0, size=2 * PAGE)
        self.assertRaisesBrokerError(client.FailedPrecondition,
                                     grpc.StatusCode.FAILED_PRECONDITION,
                                     self.broker.unmap, self.device_id, iova=mapped.iova,
                                     size=PAGE)
        still_mapped = self.broker.translate(self.device_id, mapped.iova, PAGE, "read")
        self.assertFalse(still_mapped.HasField("fault"))

    # Batch -------------------------------------------------------------------

    def test_batch_one_bad_operation_fails_alone(self):
        self.attached_device("fast")
        results = self.broker.batch([
            client.map_op(self.device_id, phys=PAGE, size=PAGE, write=False),
            client.unmap_op(self.device_id, iova=0x1003, size=PAGE),
            client.translate_op(self.device_id, iova=UNMAPPED_IOVA, size=8, access="read"),
            client.flush_op(self.domain_id),
        ])
        self.assertEqual(len(results), 4)
        mapped, bad_unmap, translated, flushed = results
        self.assertIsInstance(mapped, pb.MapResponse)
        self.assertEqual(mapped.leaves_4k, 1)
        self.assertIsInstance(bad_unmap, client.InvalidArgument)
        self.assertEqual(bad_unmap.code, grpc.StatusCode.INVALID_ARGUMENT)
        self.assertIn("0x1003", bad_unmap.details)
        self.assertEqual(translated.fault.reason, pb.FAULT_REASON_NOT_MAPPED)
        self.assertIsNone(flushed)
        # The map before the failed operation happened.
        self.assertEqual(self.broker.get_domain(self.domain_id).stats.live_mappings, 1)

    def test_batch_sends_chunks_within_the_broker_limit(self):
        self.attached_device("paranoid")
        operations = [client.map_op(self.device_id, phys=n * PAGE, size=PAGE)
                      for n in range(MAX_BATCH_OPERATIONS + 2)]
        results = self.broker.batch(operations, chunk_size=MAX_BATCH_OPERATIONS)
        self.assertEqual(len(results), len(operations))
        self.assertTrue(all(isinstance(result, pb.MapResponse) for result in results))
        self.assertEqual(len({result.iova for result in results}), len(operations))

    def test_batch_message_above_the_limit_is_refused(self):
        self.attached_device("paranoid")
        operations = [client.translate_op(self.device_id, iova=UNMAPPED_IOVA, size=8,
                                          access="read")] * (MAX_BATCH_OPERATIONS + 1)
        self.assertRaisesBrokerError(client.ResourceExhausted,
                                     grpc.StatusCode.RESOURCE_EXHAUSTED, self.broker.batch,
                                     operations, chunk_size=len(operations))

    def test_batch_of_nothing_is_empty(self):
        self.assertEqual(self.broker.batch([]), [])

    def test_batch_rejects_non_operations(self):
        with self.assertRaises(TypeError):
            self.broker.batch([pb.GetDomainRequest(domain_id=self.domain_id)])

    # Events and stats --------------------------------------------------------

    def test_watch_events_receives_fault_of_translate(self):
        self.attached_device("fast")
        with self.broker.watch_events(self.domain_id, faults=True,
                                      invalidations=False) as watch:
            translated = self.broker.translate(self.device_id, iova=UNMAPPED_IOVA, size=8,
                                               access="write")
            event = next_event(watch)
        self.assertIsNotNone(event, "the watch stream ended without the event")
        self.assertEqual(event.WhichOneof("event"), "fault")
        self.assertEqual(event.fault, translated.fault)
        self.assertEqual(event.fault.device_id, self.device_id)
        self.assertEqual(event.fault.iova, UNMAPPED_IOVA)
        self.assertEqual(event.fault.reason, pb.FAULT_REASON_NOT_MAPPED)
        self.assertEqual(event.dropped_before, 0)

    def test_watch_events_receives_invalidation_of_unmap(self):
        self.attached_device("paranoid")
        mapped = self.broker.map(self.device_id, phys=0, size=PAGE)
        with self.broker.watch_events(self.domain_id, faults=False,
                                      invalidations=True) as watch:
            self.broker.unmap(self.device_id, iova=mapped.iova, size=PAGE)
            event = next_event(watch)
        self.assertIsNotNone(event, "the watch stream ended without the event")
        self.assertEqual(event.invalidation.scope, pb.Invalidation.SCOPE_RANGE)
        self.assertEqual((event.invalidation.iova, event.invalidation.size), (mapped.iova, PAGE))

    def test_watch_events_cancel_ends_iteration(self):
        self.broker.create_domain(self.domain_id, "fast")
        watch = self.broker.watch_events(self.domain_id)
        threading.Timer(0.1, watch.cancel).start()
        self.assertEqual(list(watch), [])

    def test_watch_events_without_a_kind_is_refused(self):
        self.assertRaisesBrokerError(client.InvalidArgument, grpc.StatusCode.INVALID_ARGUMENT,
                                     self.broker.watch_events, faults=False,
                                     invalidations=False)

    def test_get_stats(self):
        self.attached_device("fast")
        self.broker.map(self.device_id, phys=0, size=PAGE)
        self.broker.translate(self.device_id, iova=UNMAPPED_IOVA, size=8, access="read")
        stats = self.broker.get_stats(domain_id=self.domain_id)
        self.assertEqual(list(stats.domains), [self.domain_id])
        self.assertEqual(stats.domains[self.domain_id].maps, 1)
        self.assertEqual(stats.domains[self.domain_id].faults, 1)
        device_stats = self.broker.get_stats(device_id=self.device_id)
        self.assertEqual(device_stats.devices[self.device_id].dma_after_unmap, 1)
        self.assertRaisesBrokerError(client.NotFound, grpc.StatusCode.NOT_FOUND,
                                     self.broker.get_stats, domain_id="no-such-domain")

    # Connection --------------------------------------------------------------

    def test_target_defaults_to_environment(self):
        with mock.patch.dict(os.environ, {client.TARGET_ENV: self.daemon.target}):
            with client.Broker() as broker:
                self.assertEqual(broker.target, self.daemon.target)
                broker.create_domain(self.domain_id, "pt")
        with mock.patch.dict(os.environ, clear=True):
            with client.Broker() as broker:
                self.assertEqual(broker.target, client.DEFAULT_TARGET)


class ShutdownTest(unittest.TestCase):
    """SIGTERM: watchers see their stream end, and the daemon exits 0."""

    def test_sigterm_ends_watch_and_exits_zero(self):
        daemon, broker = start_daemon(self.addCleanup)
        watch = broker.watch_events()
        exit_status = daemon.terminate()
        self.assertIsNone(next_event(watch), "the watch stream ends without events")
        self.assertEqual(exit_status, 0, daemon.log())


if __name__ == "__main__":
    unittest.main()
