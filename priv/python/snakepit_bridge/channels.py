"""Channels to the bridge server, with its token and TLS: :func:`connect` and :func:`connect_async`.

A server started with a token (``SNAKEPIT_BRIDGE_TOKEN`` or ``--token-file``)
answers every call except gRPC health checking with UNAUTHENTICATED unless the
call carries the metadata ``authorization: Bearer <token>``; one started with
``--tls-cert``/``--tls-key`` speaks TLS only. These functions make the channel
that does both, from arguments or, by default, from the environment::

    SNAKEPIT_BRIDGE_ADDRESS            host:port of the server
    SNAKEPIT_BRIDGE_TOKEN              the server token or a session token (empty: none)
    SNAKEPIT_BRIDGE_ROOT_CERTIFICATES  a PEM file of the CAs to trust; setting it turns TLS on

so that a worker started by Elixir needs only::

    ctx = SessionContext(os.environ["SNAKEPIT_BRIDGE_SESSION"], connect())

and asyncio code ``async with connect_async() as channel: ...``.

How the token travels: over TLS as gRPC call credentials
(``grpc.access_token_call_credentials``); over plaintext, where grpc refuses
call credentials, as the same header, which the returned channel (a thin
wrapper of grpc's own, still a ``grpc.Channel`` / ``grpc.aio.Channel``) adds
to the metadata of every call, after the caller's own (kept, never modified).
A token sent in plaintext can be read by anyone on the path: plaintext is for
loopback.

Two transports carry the calls. ``transport="native"`` is the
``snakepit_bridge_native`` extension (tonic, in Rust; ``pip install
native/snakepit_py``): the same calls at a fraction of grpcio's client cost,
most of all for watches. ``transport="grpc"`` is grpcio, the portable
fallback. ``"auto"`` (the default, or ``$SNAKEPIT_BRIDGE_TRANSPORT``) takes the
native one for plaintext when it is installed and no channel option but the
message size limits (and ``grpc.use_local_subchannel_pool``) is given, else grpcio. TLS goes native only with
``transport="native"`` and given root certificates: its TLS (rustls) is
stricter than grpcio's and refuses, for one, a self-signed CA certificate
used as the server's own. Both return a ``grpc.Channel`` /
``grpc.aio.Channel``; a native one hands what the extension does not do
(client streaming, connectivity) to a grpcio channel it opens when first
needed (see :mod:`snakepit_bridge._native`).

A refused token makes calls fail with
:class:`~snakepit_bridge.errors.AuthenticationError` (UNAUTHENTICATED), and a
session token used outside its session with
:class:`~snakepit_bridge.errors.PermissionDeniedError` (a subclass).
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

import grpc
import grpc.aio

from ._native import AVAILABLE as NATIVE_AVAILABLE
from ._native import SUPPORTED_OPTIONS as NATIVE_OPTIONS
from ._native import AsyncNativeChannel, NativeChannel, open_native

if TYPE_CHECKING:  # typing-only names: grpc's for what a call returns, and Self (typing has it from 3.11)
    from grpc import _CallFuture, _CallIterator
    from typing_extensions import Self

__all__ = [
    "ADDRESS_ENV",
    "ROOT_CERTIFICATES_ENV",
    "TOKEN_ENV",
    "TRANSPORT_ENV",
    "connect",
    "connect_async",
]

#: Environment variable holding the server's ``host:port``, the default address.
ADDRESS_ENV = "SNAKEPIT_BRIDGE_ADDRESS"
#: Environment variable holding the token sent with every call (empty or unset: none).
TOKEN_ENV = "SNAKEPIT_BRIDGE_TOKEN"
#: Environment variable naming a PEM file of root certificates; when set, TLS is used by default.
ROOT_CERTIFICATES_ENV = "SNAKEPIT_BRIDGE_ROOT_CERTIFICATES"
#: Environment variable choosing the transport when ``transport`` is not given: ``auto``, ``native`` or ``grpc``.
TRANSPORT_ENV = "SNAKEPIT_BRIDGE_TRANSPORT"
_TRANSPORTS = ("auto", "native", "grpc")


def connect(
    address: str | None = None,
    *,
    token: str | None = None,
    root_certificates: bytes | None = None,
    private_key: bytes | None = None,
    certificate_chain: bytes | None = None,
    tls: bool | None = None,
    options: Sequence[tuple[str, Any]] | None = None,
    transport: str | None = None,
) -> grpc.Channel:
    """A blocking ``grpc.Channel`` to the bridge server, for :class:`~snakepit_bridge.SessionContext`.

    The caller owns the channel: close it (``with connect() as channel:``).
    Nothing is sent until the first call, so a wrong address or token shows
    up there (as :class:`~snakepit_bridge.errors.BridgeUnavailableError` or
    :class:`~snakepit_bridge.errors.AuthenticationError`).

    Args:
        address: ``host:port``; default ``$SNAKEPIT_BRIDGE_ADDRESS``.
        token: sent as ``authorization: Bearer <token>`` with every call: the
            server's token, or a session token (``snakepit-bridge-server
            session-token SESSION_ID``) that allows that session's calls only.
            Default ``$SNAKEPIT_BRIDGE_TOKEN``. Surrounding whitespace (a
            newline read from a file) is ignored; empty means none.
        root_certificates: PEM certificates of the CAs that may sign the
            server's certificate; default the contents of the file
            ``$SNAKEPIT_BRIDGE_ROOT_CERTIFICATES`` names, else (with TLS)
            grpc's default roots.
        private_key: PEM private key of a client certificate (mutual TLS),
            given together with ``certificate_chain``.
        certificate_chain: PEM client certificate chain (mutual TLS).
        tls: ``True`` for TLS, ``False`` for plaintext; ``None`` (the default)
            means TLS exactly when root certificates (given or from the
            environment) or a client certificate are given.
        options: grpc channel options, e.g. ``[("grpc.max_receive_message_length", n)]``.
            The native transport honours the two message size limits (and
            ``grpc.use_local_subchannel_pool``: each native channel has its own
            connection); with any other option ``"auto"`` picks grpcio.
        transport: ``"native"`` (the ``snakepit_bridge_native`` extension),
            ``"grpc"`` (grpcio) or ``"auto"``; default
            ``$SNAKEPIT_BRIDGE_TRANSPORT``, else ``"auto"``: native when it is
            installed, the channel is plaintext and no option but those it
            honours is given.

    Raises:
        ValueError: no address (neither given nor ``$SNAKEPIT_BRIDGE_ADDRESS``),
            a token with characters other than visible ASCII, only one of
            ``private_key`` and ``certificate_chain``, certificates given
            with ``tls=False``, an unknown ``transport``, or
            ``transport="native"`` where it cannot serve: the extension is not
            installed, TLS without root certificates (it does not read the
            system's), or a channel option it does not support.
        OSError: the file ``$SNAKEPIT_BRIDGE_ROOT_CERTIFICATES`` names cannot be read.
    """
    plan = _plan(address, token, root_certificates, private_key, certificate_chain, tls)
    return _open(plan, options, transport, NativeChannel, _grpc_channel)  # type: ignore[no-any-return]


def _grpc_channel(plan: _Plan, options: Sequence[tuple[str, Any]] | None) -> grpc.Channel:
    if plan.credentials is not None:
        return grpc.secure_channel(plan.address, plan.credentials, options=options)
    channel = grpc.insecure_channel(plan.address, options=options)
    if plan.header is None:
        return channel
    return _AuthorizedChannel(channel, plan.header)


def connect_async(
    address: str | None = None,
    *,
    token: str | None = None,
    root_certificates: bytes | None = None,
    private_key: bytes | None = None,
    certificate_chain: bytes | None = None,
    tls: bool | None = None,
    options: Sequence[tuple[str, Any]] | None = None,
    transport: str | None = None,
) -> grpc.aio.Channel:
    """:func:`connect` for asyncio: a ``grpc.aio.Channel``, for :class:`~snakepit_bridge.AsyncSessionContext`.

    A plain function (not a coroutine); use the channel as
    ``async with connect_async() as channel:`` or close it with
    ``await channel.close()``. Arguments, defaults and errors are those of
    :func:`connect`.
    """
    plan = _plan(address, token, root_certificates, private_key, certificate_chain, tls)
    return _open(plan, options, transport, AsyncNativeChannel, _grpc_aio_channel)  # type: ignore[no-any-return]


def _grpc_aio_channel(plan: _Plan, options: Sequence[tuple[str, Any]] | None) -> grpc.aio.Channel:
    if plan.credentials is not None:
        return grpc.aio.secure_channel(plan.address, plan.credentials, options=options)
    channel = grpc.aio.insecure_channel(plan.address, options=options)
    if plan.header is None:
        return channel
    return _AsyncAuthorizedChannel(channel, plan.header)


# --------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class _Plan:
    """What a channel needs: the address, the token's header, and for TLS the PEM inputs and grpc's credentials.

    The native transport sends ``token_header`` with every call; grpcio
    carries the token in the TLS credentials, or over plaintext as
    :attr:`header`.
    """

    address: str
    credentials: grpc.ChannelCredentials | None  # TLS only, with the token in them
    token_header: tuple[str, str] | None
    tls: bool
    root_certificates: bytes | None
    private_key: bytes | None
    certificate_chain: bytes | None

    @property
    def header(self) -> tuple[str, str] | None:
        """The header grpcio's plaintext channel adds to every call (TLS sends the token as credentials)."""
        return None if self.tls else self.token_header

    def tls_args(self) -> dict[str, Any]:
        return {
            "tls": self.tls,
            "root_certificates": self.root_certificates,
            "private_key": self.private_key,
            "certificate_chain": self.certificate_chain,
        }


def _open(
    plan: _Plan,
    options: Sequence[tuple[str, Any]] | None,
    transport: str | None,
    native_class: type[NativeChannel] | type[AsyncNativeChannel],
    open_grpc: Callable[[_Plan, Sequence[tuple[str, Any]] | None], Any],
) -> Any:
    """The channel of the transport chosen: a native one (with ``open_grpc`` for what it hands on), or grpcio's."""
    if not _native_fits(plan, options, transport):
        return open_grpc(plan, options)
    # A copy for the grpcio channel the native one may open later, whatever the caller does with theirs meanwhile.
    grpc_options = list(options or ())
    return open_native(
        native_class,
        plan.address,
        plan.token_header,
        lambda: open_grpc(plan, grpc_options),
        options=options,
        **plan.tls_args(),
    )


def _native_fits(plan: _Plan, options: Sequence[tuple[str, Any]] | None, transport: str | None) -> bool:
    """Whether to use the native transport (the ValueErrors of ``transport="native"`` when it cannot serve)."""
    if transport is None:
        transport = os.environ.get(TRANSPORT_ENV) or "auto"
    if transport not in _TRANSPORTS:
        raise ValueError(f"transport must be one of {', '.join(_TRANSPORTS)}; got {transport!r}")
    if transport == "grpc":
        return False
    problem = None
    if not NATIVE_AVAILABLE:
        problem = "the snakepit_bridge_native extension is not installed (pip install native/snakepit_py)"
    elif plan.tls and plan.root_certificates is None:
        problem = "TLS needs root_certificates (or $SNAKEPIT_BRIDGE_ROOT_CERTIFICATES): it does not read the system's"
    elif plan.tls and transport == "auto":
        # rustls is stricter than grpcio's BoringSSL (it refuses, e.g., a
        # self-signed CA certificate used as the server's own): TLS is opt-in.
        problem = "TLS goes native only when asked for"
    else:
        unsupported = sorted({key for key, _ in options or () if key not in NATIVE_OPTIONS})
        if unsupported:
            problem = f"channel options {unsupported} are grpcio's only"
    if problem is None:
        return True
    if transport == "native":
        raise ValueError(f"transport='native' cannot serve this channel: {problem}")
    return False


def _plan(
    address: str | None,
    token: str | None,
    root_certificates: bytes | None,
    private_key: bytes | None,
    certificate_chain: bytes | None,
    tls: bool | None,
) -> _Plan:
    """Resolve the arguments against the environment, checking them (the ValueErrors of :func:`connect`)."""
    if address is None:
        address = os.environ.get(ADDRESS_ENV)
        if not address:
            raise ValueError(f"no server address: pass address='host:port' or set {ADDRESS_ENV}")
    elif not address:
        raise ValueError("address is empty: pass 'host:port'")

    if token is None:
        token = os.environ.get(TOKEN_ENV, "")
    token = token.strip()
    if token and not all("!" <= ch <= "~" for ch in token):
        # Never echo the token: it is a secret.
        raise ValueError("token must be visible ASCII characters only (no spaces or control characters)")

    if (private_key is None) != (certificate_chain is None):
        raise ValueError("a client certificate needs both private_key and certificate_chain")
    if tls is False:
        if root_certificates is not None or certificate_chain is not None:
            raise ValueError("certificates were given with tls=False")
    elif root_certificates is None:
        root_file = os.environ.get(ROOT_CERTIFICATES_ENV)
        if root_file:
            root_certificates = Path(root_file).read_bytes()
    if tls is None:
        tls = root_certificates is not None or certificate_chain is not None

    header = ("authorization", f"Bearer {token}") if token else None
    pem = (root_certificates, private_key, certificate_chain)
    if not tls:
        return _Plan(address, None, header, False, *pem)
    credentials = grpc.ssl_channel_credentials(root_certificates, private_key, certificate_chain)
    if token:
        credentials = grpc.composite_channel_credentials(credentials, grpc.access_token_call_credentials(token))
    return _Plan(address, credentials, header, True, *pem)


# --------------------------------------------------------------------------- the header over plaintext
#
# Thin wrappers rather than grpc client interceptors: grpc's interceptor
# machinery costs tens of microseconds per call, these a tuple. Each factory
# passes every argument through (generated stubs add private keywords such as
# ``_registered_method`` in newer grpcio), and each call appends the header to
# a new tuple of the caller's metadata.

if TYPE_CHECKING:  # the stubs make these generic; at runtime (grpcio >= 1.62) they may not be subscriptable
    _UnaryUnaryBase = grpc.UnaryUnaryMultiCallable[Any, Any]
    _UnaryStreamBase = grpc.UnaryStreamMultiCallable[Any, Any]
    _StreamUnaryBase = grpc.StreamUnaryMultiCallable[Any, Any]
    _StreamStreamBase = grpc.StreamStreamMultiCallable[Any, Any]
    _AsyncUnaryUnaryBase = grpc.aio.UnaryUnaryMultiCallable[Any, Any]
    _AsyncUnaryStreamBase = grpc.aio.UnaryStreamMultiCallable[Any, Any]
    _AsyncStreamUnaryBase = grpc.aio.StreamUnaryMultiCallable[Any, Any]
    _AsyncStreamStreamBase = grpc.aio.StreamStreamMultiCallable[Any, Any]
else:
    _UnaryUnaryBase = grpc.UnaryUnaryMultiCallable
    _UnaryStreamBase = grpc.UnaryStreamMultiCallable
    _StreamUnaryBase = grpc.StreamUnaryMultiCallable
    _StreamStreamBase = grpc.StreamStreamMultiCallable
    _AsyncUnaryUnaryBase = grpc.aio.UnaryUnaryMultiCallable
    _AsyncUnaryStreamBase = grpc.aio.UnaryStreamMultiCallable
    _AsyncStreamUnaryBase = grpc.aio.StreamUnaryMultiCallable
    _AsyncStreamStreamBase = grpc.aio.StreamStreamMultiCallable

_Metadatum = tuple[str, str | bytes]
_Metadata = tuple[_Metadatum, ...]


class _Header:
    """The header, and the metadata of a call: a new tuple, the caller's entries first, the header last."""

    __slots__ = ("_alone", "_header")

    def __init__(self, header: tuple[str, str]) -> None:
        self._header: _Metadatum = header
        self._alone: _Metadata = (header,)

    def metadata(self, metadata: Iterable[_Metadatum] | None) -> _Metadata:
        # Never mutates the caller's object (a list, a tuple, a grpc.aio.Metadata): builds a new tuple.
        return (*metadata, self._header) if metadata else self._alone


class _Wrapped:
    """What every wrapped multicallable holds: grpc's own multicallable, and the header to add."""

    __slots__ = ("_call", "_header")

    def __init__(self, call: Any, header: _Header) -> None:
        self._call = call
        self._header = header


class _AuthorizedChannel(grpc.Channel):
    """A blocking channel that adds the ``authorization`` header to every call, after the caller's metadata."""

    def __init__(self, channel: grpc.Channel, header: tuple[str, str]) -> None:
        self._channel = channel
        self._header = _Header(header)

    def unary_unary(self, method: str, *args: Any, **kwargs: Any) -> _UnaryUnary:
        return _UnaryUnary(self._channel.unary_unary(method, *args, **kwargs), self._header)

    def unary_stream(self, method: str, *args: Any, **kwargs: Any) -> _UnaryStream:
        return _UnaryStream(self._channel.unary_stream(method, *args, **kwargs), self._header)

    def stream_unary(self, method: str, *args: Any, **kwargs: Any) -> _StreamUnary:
        return _StreamUnary(self._channel.stream_unary(method, *args, **kwargs), self._header)

    def stream_stream(self, method: str, *args: Any, **kwargs: Any) -> _StreamStream:
        return _StreamStream(self._channel.stream_stream(method, *args, **kwargs), self._header)

    def subscribe(self, callback: Callable[[grpc.ChannelConnectivity], None], try_to_connect: bool = False) -> None:
        self._channel.subscribe(callback, try_to_connect)

    def unsubscribe(self, callback: Callable[[grpc.ChannelConnectivity], None]) -> None:
        self._channel.unsubscribe(callback)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> Self:
        self._channel.__enter__()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc_val: BaseException | None, exc_tb: TracebackType | None
    ) -> bool | None:
        return self._channel.__exit__(exc_type, exc_val, exc_tb)


class _UnaryUnary(_Wrapped, _UnaryUnaryBase):
    _call: grpc.UnaryUnaryMultiCallable[Any, Any]

    def __call__(
        self,
        request: Any,
        timeout: float | None = None,
        metadata: Iterable[_Metadatum] | None = None,
        *args: Any,
        **kwargs: Any,
    ) -> Any:
        return self._call(request, timeout, self._header.metadata(metadata), *args, **kwargs)

    def with_call(
        self,
        request: Any,
        timeout: float | None = None,
        metadata: Iterable[_Metadatum] | None = None,
        *args: Any,
        **kwargs: Any,
    ) -> tuple[Any, grpc.Call]:
        return self._call.with_call(request, timeout, self._header.metadata(metadata), *args, **kwargs)

    def future(
        self,
        request: Any,
        timeout: float | None = None,
        metadata: Iterable[_Metadatum] | None = None,
        *args: Any,
        **kwargs: Any,
    ) -> _CallFuture[Any]:
        return self._call.future(request, timeout, self._header.metadata(metadata), *args, **kwargs)


class _UnaryStream(_Wrapped, _UnaryStreamBase):
    _call: grpc.UnaryStreamMultiCallable[Any, Any]

    def __call__(
        self,
        request: Any,
        timeout: float | None = None,
        metadata: Iterable[_Metadatum] | None = None,
        *args: Any,
        **kwargs: Any,
    ) -> _CallIterator[Any]:
        return self._call(request, timeout, self._header.metadata(metadata), *args, **kwargs)


class _StreamUnary(_Wrapped, _StreamUnaryBase):
    _call: grpc.StreamUnaryMultiCallable[Any, Any]

    def __call__(
        self,
        request_iterator: Iterator[Any],
        timeout: float | None = None,
        metadata: Iterable[_Metadatum] | None = None,
        *args: Any,
        **kwargs: Any,
    ) -> Any:
        return self._call(request_iterator, timeout, self._header.metadata(metadata), *args, **kwargs)

    def with_call(
        self,
        request_iterator: Iterator[Any],
        timeout: float | None = None,
        metadata: Iterable[_Metadatum] | None = None,
        *args: Any,
        **kwargs: Any,
    ) -> tuple[Any, grpc.Call]:
        return self._call.with_call(request_iterator, timeout, self._header.metadata(metadata), *args, **kwargs)

    def future(
        self,
        request_iterator: Iterator[Any],
        timeout: float | None = None,
        metadata: Iterable[_Metadatum] | None = None,
        *args: Any,
        **kwargs: Any,
    ) -> _CallFuture[Any]:
        return self._call.future(request_iterator, timeout, self._header.metadata(metadata), *args, **kwargs)


class _StreamStream(_Wrapped, _StreamStreamBase):
    _call: grpc.StreamStreamMultiCallable[Any, Any]

    def __call__(
        self,
        request_iterator: Iterator[Any],
        timeout: float | None = None,
        metadata: Iterable[_Metadatum] | None = None,
        *args: Any,
        **kwargs: Any,
    ) -> _CallIterator[Any]:
        return self._call(request_iterator, timeout, self._header.metadata(metadata), *args, **kwargs)


class _AsyncAuthorizedChannel(grpc.aio.Channel):
    """A ``grpc.aio`` channel that adds the ``authorization`` header to every call, after the caller's metadata."""

    def __init__(self, channel: grpc.aio.Channel, header: tuple[str, str]) -> None:
        self._channel = channel
        self._header = _Header(header)

    def unary_unary(self, method: str, *args: Any, **kwargs: Any) -> _AsyncUnaryUnary:
        return _AsyncUnaryUnary(self._channel.unary_unary(method, *args, **kwargs), self._header)

    def unary_stream(self, method: str, *args: Any, **kwargs: Any) -> _AsyncUnaryStream:
        return _AsyncUnaryStream(self._channel.unary_stream(method, *args, **kwargs), self._header)

    def stream_unary(self, method: str, *args: Any, **kwargs: Any) -> _AsyncStreamUnary:
        return _AsyncStreamUnary(self._channel.stream_unary(method, *args, **kwargs), self._header)

    def stream_stream(self, method: str, *args: Any, **kwargs: Any) -> _AsyncStreamStream:
        return _AsyncStreamStream(self._channel.stream_stream(method, *args, **kwargs), self._header)

    def get_state(self, try_to_connect: bool = False) -> grpc.ChannelConnectivity:
        return self._channel.get_state(try_to_connect)

    async def wait_for_state_change(self, last_observed_state: grpc.ChannelConnectivity) -> None:
        await self._channel.wait_for_state_change(last_observed_state)

    async def channel_ready(self) -> None:
        await self._channel.channel_ready()

    async def close(self, grace: float | None = None) -> None:
        await self._channel.close(grace)

    async def __aenter__(self) -> Self:
        await self._channel.__aenter__()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc_val: BaseException | None, exc_tb: TracebackType | None
    ) -> bool | None:
        return await self._channel.__aexit__(exc_type, exc_val, exc_tb)


class _AsyncUnaryUnary(_Wrapped, _AsyncUnaryUnaryBase):
    _call: grpc.aio.UnaryUnaryMultiCallable[Any, Any]

    def __call__(
        self, request: Any, *, metadata: Iterable[_Metadatum] | None = None, **kwargs: Any
    ) -> grpc.aio.UnaryUnaryCall[Any, Any]:
        return self._call(request, metadata=self._header.metadata(metadata), **kwargs)


class _AsyncUnaryStream(_Wrapped, _AsyncUnaryStreamBase):
    _call: grpc.aio.UnaryStreamMultiCallable[Any, Any]

    def __call__(
        self, request: Any, *, metadata: Iterable[_Metadatum] | None = None, **kwargs: Any
    ) -> grpc.aio.UnaryStreamCall[Any, Any]:
        return self._call(request, metadata=self._header.metadata(metadata), **kwargs)


class _AsyncStreamUnary(_Wrapped, _AsyncStreamUnaryBase):
    _call: grpc.aio.StreamUnaryMultiCallable[Any, Any]

    def __call__(
        self,
        request_iterator: AsyncIterator[Any] | Iterator[Any] | None = None,
        timeout: float | None = None,
        metadata: Iterable[_Metadatum] | None = None,
        *args: Any,
        **kwargs: Any,
    ) -> grpc.aio.StreamUnaryCall[Any, Any]:
        return self._call(request_iterator, timeout, self._header.metadata(metadata), *args, **kwargs)


class _AsyncStreamStream(_Wrapped, _AsyncStreamStreamBase):
    _call: grpc.aio.StreamStreamMultiCallable[Any, Any]

    def __call__(
        self,
        request_iterator: AsyncIterator[Any] | Iterator[Any] | None = None,
        timeout: float | None = None,
        metadata: Iterable[_Metadatum] | None = None,
        *args: Any,
        **kwargs: Any,
    ) -> grpc.aio.StreamStreamCall[Any, Any]:
        return self._call(request_iterator, timeout, self._header.metadata(metadata), *args, **kwargs)
