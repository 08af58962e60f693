"""How a Broker reaches iommu-brokerd: TLS files, the bearer token, the channel.

    channel = make_channel(
        "broker.example:50051",
        tls=TlsFiles(root_certificates="ca.crt",            # mutual TLS: all three
                     certificate_chain="driver.crt", private_key="driver.key"),
        token=read_token_file("/run/secrets/broker-token"))

A client proves who it is with a TLS client certificate, or with a bearer
token that travels as `authorization: Bearer <token>` metadata on every call,
unary and streaming. The token is added by a client interceptor, not by gRPC
call credentials, which gRPC sends only over TLS: a broker on a Unix socket
or loopback serves plaintext and still authenticates tokens. Over any other
network use TLS too, or the token crosses it in the clear.

Keep tokens in files (IOMMU_BROKER_TOKEN_FILE names one), never on a command
line, where `ps` shows them to every user of the machine. No error message
repeats a token.
"""

import collections

import grpc

TOKEN_FILE_ENV = "IOMMU_BROKER_TOKEN_FILE"
# The metadata the broker reads a token from.
AUTHORIZATION_KEY = "authorization"
BEARER_PREFIX = "Bearer "


class TlsFiles(collections.namedtuple(
        "TlsFiles", ("root_certificates", "certificate_chain", "private_key"),
        defaults=(None, None, None))):
    """Paths of the PEM files for a TLS connection.

    Attributes:
        root_certificates: the CA bundle that signed the broker's certificate;
            None (or "") for the system's.
        certificate_chain, private_key: this client's certificate and key,
            for mutual TLS; both or neither.
    """


def validate_token(token):
    """Raises ValueError unless `token` is non-empty printable ASCII without spaces.

    That is what a metadata value carries unchanged. The message gives the
    offending character's position, never the token.
    """
    if not isinstance(token, str):
        raise TypeError(f"a bearer token is a str, not {type(token).__name__}")
    if not token:
        raise ValueError("bearer token is empty")
    for position, character in enumerate(token):
        if not "\x21" <= character <= "\x7e":
            raise ValueError(
                f"bearer token has a space, control or non-ASCII character at position "
                f"{position}: it must be printable ASCII without spaces")


def read_token_file(path):
    """The token in the file at `path`: its first line, trailing whitespace removed.

    Raises:
        OSError: the file cannot be read (the exception names it).
        ValueError: the token is empty or invalid; the message names the
            file, not the token.
    """
    with open(path, "rb") as token_file:
        line = token_file.readline()
    # latin-1 maps every byte to one character, so a stray byte is reported
    # at its position instead of failing to decode.
    token = line.rstrip().decode("latin-1")
    try:
        validate_token(token)
    except ValueError as error:
        raise ValueError(f"token file {path}: {error}") from None
    return token


def channel_credentials(tls):
    """grpc.ChannelCredentials from a TlsFiles (the files are read now)."""
    if bool(tls.certificate_chain) != bool(tls.private_key):
        raise ValueError("TLS certificate_chain and private_key must be given together "
                         "(mutual TLS) or not at all")
    return grpc.ssl_channel_credentials(
        root_certificates=_read_optional(tls.root_certificates),
        private_key=_read_optional(tls.private_key),
        certificate_chain=_read_optional(tls.certificate_chain))


def make_channel(target, *, tls=None, token=None):
    """A channel to `target` ("host:port" or "unix:/path").

    Args:
        tls: a TlsFiles for TLS; None for plaintext, as a broker on loopback
            or a Unix socket serves.
        token: the bearer token sent on every call; None for none.

    Raises:
        ValueError: an invalid token, or a client certificate without its
            key (or the reverse).
        OSError: a TLS file cannot be read.
    """
    interceptor = None if token is None else BearerTokenInterceptor(token)
    if tls is None:
        channel = grpc.insecure_channel(target)
    else:
        channel = grpc.secure_channel(target, channel_credentials(tls))
    if interceptor is None:
        return channel
    return grpc.intercept_channel(channel, interceptor)


class _CallDetails(
        collections.namedtuple(
            "_CallDetails",
            ("method", "timeout", "metadata", "credentials", "wait_for_ready", "compression")),
        grpc.ClientCallDetails):
    """A call's details with its metadata replaced."""


class BearerTokenInterceptor(grpc.UnaryUnaryClientInterceptor,
                             grpc.UnaryStreamClientInterceptor,
                             grpc.StreamUnaryClientInterceptor,
                             grpc.StreamStreamClientInterceptor):
    """Adds `authorization: Bearer <token>` to every call, whatever its kind."""

    def __init__(self, token):
        validate_token(token)
        self._header = (AUTHORIZATION_KEY, BEARER_PREFIX + token)

    def _with_token(self, details):
        return _CallDetails(details.method, details.timeout,
                            [*(details.metadata or ()), self._header], details.credentials,
                            details.wait_for_ready, details.compression)

    def intercept_unary_unary(self, continuation, client_call_details, request):
        return continuation(self._with_token(client_call_details), request)

    def intercept_unary_stream(self, continuation, client_call_details, request):
        return continuation(self._with_token(client_call_details), request)

    def intercept_stream_unary(self, continuation, client_call_details, request_iterator):
        return continuation(self._with_token(client_call_details), request_iterator)

    def intercept_stream_stream(self, continuation, client_call_details, request_iterator):
        return continuation(self._with_token(client_call_details), request_iterator)


def _read_optional(path):
    """The bytes of the file at `path`, or None for no path (None or "")."""
    if not path:
        return None
    with open(path, "rb") as pem_file:
        return pem_file.read()
