"""Tests of the client's TLS and bearer-token support against an in-process fake.

A grpc server in this process records each call's `authorization` metadata
and TLS client certificate SANs: the token must arrive on unary and
streaming calls of every kind, over loopback TCP, a Unix socket and mutual
TLS (the committed test certificates of tests/testdata/tls/). No daemon is
needed; no assertion depends on how long anything takes.
"""

import os
import shutil
import tempfile
import threading
import unittest
from concurrent import futures
from unittest import mock

import grpc

import iommu_broker_client as client
from iommu_broker_client import pb
from iommu_broker.v1 import iommu_broker_pb2_grpc as pb_grpc

TLS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                       "..", "..", "..", "tests", "testdata", "tls")
TOKEN = "s3cret-T0ken_value.~+/="
DRIVER_SAN = b"driver.clients.iommu-broker.test"
# A fake with nothing to wait for answers at once; this only bounds a hang.
CALL_TIMEOUT_SECONDS = 60


def tls_file(name):
    return os.path.join(TLS_DIR, name)


def read_bytes(path):
    with open(path, "rb") as pem:
        return pem.read()


class Recorder:
    """What the server saw of each call: (method, authorization values, SANs)."""

    def __init__(self):
        self._lock = threading.Lock()
        self._calls = []

    def record(self, method, context):
        authorization = [value for key, value in context.invocation_metadata()
                         if key == client.connection.AUTHORIZATION_KEY]
        sans = context.auth_context().get("x509_subject_alternative_name", [])
        with self._lock:
            self._calls.append((method, authorization, list(sans)))

    def calls(self):
        with self._lock:
            return list(self._calls)


class RecordingServicer(pb_grpc.IommuBrokerServicer):
    """ListDomains, WatchEvents (no events) and Batch (flushes only) that record their calls."""

    def __init__(self, recorder):
        self._recorder = recorder

    def ListDomains(self, request, context):
        self._recorder.record("ListDomains", context)
        return pb.ListDomainsResponse()

    def WatchEvents(self, request, context):
        self._recorder.record("WatchEvents", context)
        return iter(())

    def Batch(self, request_iterator, context):
        self._recorder.record("Batch", context)
        for request in request_iterator:
            yield pb.BatchResponse(results=[pb.OperationResult(flush=pb.FlushResponse())
                                            for _ in request.operations])


def kinds_handler(recorder):
    """A service "test.Kinds" with one bytes-in, bytes-out method of each call kind."""

    def unary_unary(request, context):
        recorder.record("UnaryUnary", context)
        return request

    def unary_stream(request, context):
        recorder.record("UnaryStream", context)
        yield request

    def stream_unary(request_iterator, context):
        recorder.record("StreamUnary", context)
        return b"".join(request_iterator)

    def stream_stream(request_iterator, context):
        recorder.record("StreamStream", context)
        yield from request_iterator

    return grpc.method_handlers_generic_handler("test.Kinds", {
        "UnaryUnary": grpc.unary_unary_rpc_method_handler(unary_unary),
        "UnaryStream": grpc.unary_stream_rpc_method_handler(unary_stream),
        "StreamUnary": grpc.stream_unary_rpc_method_handler(stream_unary),
        "StreamStream": grpc.stream_stream_rpc_method_handler(stream_stream),
    })


def start_fake(add_cleanup, address="127.0.0.1:0", server_credentials=None):
    """Serves the fakes on `address`; returns (target, recorder)."""
    recorder = Recorder()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    pb_grpc.add_IommuBrokerServicer_to_server(RecordingServicer(recorder), server)
    server.add_generic_rpc_handlers((kinds_handler(recorder),))
    if server_credentials is None:
        port = server.add_insecure_port(address)
    else:
        port = server.add_secure_port(address, server_credentials)
    server.start()
    add_cleanup(server.stop, None)
    target = address if address.startswith("unix:") else f"127.0.0.1:{port}"
    return target, recorder


def mutual_tls_server_credentials():
    """The test CA's broker certificate; client certificates of the test CA required."""
    return grpc.ssl_server_credentials(
        [(read_bytes(tls_file("server.key")), read_bytes(tls_file("server.crt")))],
        root_certificates=read_bytes(tls_file("ca.crt")), require_client_auth=True)


def call_broker(broker):
    """One unary, one server-streaming and one bidirectional call."""
    broker.list_domains()
    with broker.watch_events() as watch:
        events = list(watch)
    assert events == [], events
    assert broker.batch([client.flush_op("vm1")]) == [None]


class TokenTest(unittest.TestCase):

    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="connection_py.", dir="/tmp")
        self.addCleanup(shutil.rmtree, self.dir, True)
        self.bearer = f"{client.connection.BEARER_PREFIX}{TOKEN}"

    def token_file(self, contents):
        path = os.path.join(self.dir, "token")
        with open(path, "wb") as token_file:
            token_file.write(contents)
        return path

    def broker(self, target, **kwargs):
        broker = client.Broker(target, timeout=CALL_TIMEOUT_SECONDS, **kwargs)
        self.addCleanup(broker.close)
        return broker

    def assertEveryCallHas(self, recorder, methods, authorization):
        self.assertEqual([(method, values) for method, values, _ in recorder.calls()],
                         [(method, authorization) for method in methods])

    def test_token_is_sent_on_every_kind_of_call(self):
        target, recorder = start_fake(self.addCleanup)
        channel = client.make_channel(target, token=TOKEN)
        self.addCleanup(channel.close)
        unary_unary = channel.unary_unary("/test.Kinds/UnaryUnary")
        unary_stream = channel.unary_stream("/test.Kinds/UnaryStream")
        stream_unary = channel.stream_unary("/test.Kinds/StreamUnary")
        stream_stream = channel.stream_stream("/test.Kinds/StreamStream")
        self.assertEqual(unary_unary(b"a", timeout=CALL_TIMEOUT_SECONDS), b"a")
        self.assertEqual(list(unary_stream(b"b", timeout=CALL_TIMEOUT_SECONDS)), [b"b"])
        self.assertEqual(stream_unary(iter([b"c", b"d"]), timeout=CALL_TIMEOUT_SECONDS), b"cd")
        self.assertEqual(list(stream_stream(iter([b"e"]), timeout=CALL_TIMEOUT_SECONDS)),
                         [b"e"])
        # The caller's own metadata stays beside the token.
        unary_unary(b"f", timeout=CALL_TIMEOUT_SECONDS, metadata=[("x-request", "1")])
        self.assertEveryCallHas(
            recorder, ["UnaryUnary", "UnaryStream", "StreamUnary", "StreamStream", "UnaryUnary"],
            [self.bearer])

    def test_broker_sends_token_on_unary_and_streaming_calls(self):
        target, recorder = start_fake(self.addCleanup)
        call_broker(self.broker(target, token=TOKEN))
        self.assertEveryCallHas(recorder, ["ListDomains", "WatchEvents", "Batch"], [self.bearer])

    def test_no_token_sends_no_authorization(self):
        target, recorder = start_fake(self.addCleanup)
        with mock.patch.dict(os.environ, clear=True):
            broker = self.broker(target)
        call_broker(broker)
        self.assertEveryCallHas(recorder, ["ListDomains", "WatchEvents", "Batch"], [])

    def test_token_file_is_read_and_sent_over_unix_socket(self):
        target, recorder = start_fake(self.addCleanup,
                                      address=f"unix:{os.path.join(self.dir, 'broker.sock')}")
        call_broker(self.broker(target, token_file=self.token_file(f"{TOKEN}\n".encode())))
        self.assertEveryCallHas(recorder, ["ListDomains", "WatchEvents", "Batch"], [self.bearer])

    def test_token_file_defaults_to_environment(self):
        target, recorder = start_fake(self.addCleanup)
        path = self.token_file(f"{TOKEN}\n".encode())
        with mock.patch.dict(os.environ, {client.TOKEN_FILE_ENV: path}):
            broker = self.broker(target)
        broker.list_domains()
        self.assertEveryCallHas(recorder, ["ListDomains"], [self.bearer])

    def test_token_takes_precedence_over_token_file(self):
        target, recorder = start_fake(self.addCleanup)
        broker = self.broker(target, token=TOKEN, token_file="/nonexistent/token")
        broker.list_domains()
        self.assertEveryCallHas(recorder, ["ListDomains"], [self.bearer])

    def test_invalid_token_is_refused_without_echoing_it(self):
        for token in ["", f"{TOKEN} x", f"{TOKEN}\n", f"{TOKEN}\x7f", f"{TOKEN}\u00e9"]:
            with self.subTest(length=len(token)):
                with self.assertRaises(ValueError) as raised:
                    client.Broker("127.0.0.1:1", token=token)
                self.assertIn("bearer token", str(raised.exception))
                if token:
                    self.assertNotIn(TOKEN, str(raised.exception))
                    self.assertIn(f"position {len(TOKEN)}", str(raised.exception))

    def test_read_token_file_takes_first_line_without_trailing_whitespace(self):
        for contents in [TOKEN, f"{TOKEN}\n", f"{TOKEN}\r\n", f"{TOKEN} \t\n",
                         f"{TOKEN}\nsecond line\n"]:
            with self.subTest(contents=contents):
                self.assertEqual(client.read_token_file(self.token_file(contents.encode())),
                                 TOKEN)

    def test_read_token_file_errors_name_the_file_not_the_token(self):
        missing = os.path.join(self.dir, "missing")
        with self.assertRaises(OSError) as raised:
            client.read_token_file(missing)
        self.assertIn(missing, str(raised.exception))
        for contents in [b"", b"\n", b"  \n", f" {TOKEN}\n".encode(), TOKEN.encode() + b"\xff"]:
            with self.subTest(contents=contents):
                path = self.token_file(contents)
                with self.assertRaises(ValueError) as raised:
                    client.read_token_file(path)
                self.assertIn(path, str(raised.exception))
                self.assertNotIn(TOKEN, str(raised.exception))


class TlsTest(unittest.TestCase):

    def setUp(self):
        self.target, self.recorder = start_fake(
            self.addCleanup, server_credentials=mutual_tls_server_credentials())

    def broker(self, tls, **kwargs):
        broker = client.Broker(self.target, timeout=CALL_TIMEOUT_SECONDS, tls=tls, **kwargs)
        self.addCleanup(broker.close)
        return broker

    def test_mutual_tls_client_certificate_reaches_server_with_token(self):
        tls = client.TlsFiles(root_certificates=tls_file("ca.crt"),
                              certificate_chain=tls_file("driver.crt"),
                              private_key=tls_file("driver.key"))
        call_broker(self.broker(tls, token=TOKEN))
        calls = self.recorder.calls()
        self.assertEqual([method for method, _, _ in calls],
                         ["ListDomains", "WatchEvents", "Batch"])
        for method, authorization, sans in calls:
            with self.subTest(method):
                self.assertEqual(authorization, [f"Bearer {TOKEN}"])
                self.assertEqual(sans, [DRIVER_SAN])

    def test_without_trusted_client_certificate_is_refused(self):
        cases = {
            "no certificate": client.TlsFiles(root_certificates=tls_file("ca.crt")),
            "untrusted certificate": client.TlsFiles(
                root_certificates=tls_file("ca.crt"),
                certificate_chain=tls_file("untrusted.crt"),
                private_key=tls_file("untrusted.key")),
        }
        for name, tls in cases.items():
            with self.subTest(name):
                with self.assertRaises(client.Unavailable):
                    self.broker(tls).list_domains()
        self.assertEqual(self.recorder.calls(), [])

    def test_certificate_without_key_is_refused(self):
        with self.assertRaises(ValueError):
            client.Broker(self.target, tls=client.TlsFiles(
                root_certificates=tls_file("ca.crt"), certificate_chain=tls_file("driver.crt")))

    def test_unreadable_tls_file_names_it(self):
        missing = "/nonexistent/ca.crt"
        with self.assertRaises(OSError) as raised:
            client.Broker(self.target, tls=client.TlsFiles(root_certificates=missing))
        self.assertIn(missing, str(raised.exception))


if __name__ == "__main__":
    unittest.main()
