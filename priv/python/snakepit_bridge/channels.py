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
call credentials, as the same header added by a client interceptor to every
call (the caller's own metadata is kept). A token sent in plaintext can be
read by anyone on the path: plaintext is for loopback.

A refused token makes calls fail with
:class:`~snakepit_bridge.errors.AuthenticationError` (UNAUTHENTICATED), and a
session token used outside its session with
:class:`~snakepit_bridge.errors.PermissionDeniedError` (a subclass).
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterable, Awaitable, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import grpc
import grpc.aio

if TYPE_CHECKING:  # grpc's typing-only names for what a continuation returns
    from grpc import _CallFuture, _CallIterator

__all__ = [
    "ADDRESS_ENV",
    "ROOT_CERTIFICATES_ENV",
    "TOKEN_ENV",
    "connect",
    "connect_async",
]

#: Environment variable holding the server's ``host:port``, the default address.
ADDRESS_ENV = "SNAKEPIT_BRIDGE_ADDRESS"
#: Environment variable holding the token sent with every call (empty or unset: none).
TOKEN_ENV = "SNAKEPIT_BRIDGE_TOKEN"
#: Environment variable naming a PEM file of root certificates; when set, TLS is used by default.
ROOT_CERTIFICATES_ENV = "SNAKEPIT_BRIDGE_ROOT_CERTIFICATES"

_Req = TypeVar("_Req")
_Resp = TypeVar("_Resp")


def connect(
    address: str | None = None,
    *,
    token: str | None = None,
    root_certificates: bytes | None = None,
    private_key: bytes | None = None,
    certificate_chain: bytes | None = None,
    tls: bool | None = None,
    options: Sequence[tuple[str, Any]] | None = None,
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

    Raises:
        ValueError: no address (neither given nor ``$SNAKEPIT_BRIDGE_ADDRESS``),
            a token with characters other than visible ASCII, only one of
            ``private_key`` and ``certificate_chain``, or certificates given
            with ``tls=False``.
        OSError: the file ``$SNAKEPIT_BRIDGE_ROOT_CERTIFICATES`` names cannot be read.
    """
    plan = _plan(address, token, root_certificates, private_key, certificate_chain, tls)
    if plan.credentials is not None:
        return grpc.secure_channel(plan.address, plan.credentials, options=options)
    channel = grpc.insecure_channel(plan.address, options=options)
    if plan.header is None:
        return channel
    return grpc.intercept_channel(channel, _Authorize(plan.header))


def connect_async(
    address: str | None = None,
    *,
    token: str | None = None,
    root_certificates: bytes | None = None,
    private_key: bytes | None = None,
    certificate_chain: bytes | None = None,
    tls: bool | None = None,
    options: Sequence[tuple[str, Any]] | None = None,
) -> grpc.aio.Channel:
    """:func:`connect` for asyncio: a ``grpc.aio.Channel``, for :class:`~snakepit_bridge.AsyncSessionContext`.

    A plain function (not a coroutine); use the channel as
    ``async with connect_async() as channel:`` or close it with
    ``await channel.close()``. Arguments, defaults and errors are those of
    :func:`connect`.
    """
    plan = _plan(address, token, root_certificates, private_key, certificate_chain, tls)
    if plan.credentials is not None:
        return grpc.aio.secure_channel(plan.address, plan.credentials, options=options)
    if plan.header is None:
        return grpc.aio.insecure_channel(plan.address, options=options)
    header = plan.header
    # grpc.aio files each interceptor under the first kind it is, so one object per kind.
    interceptors: list[grpc.aio.ClientInterceptor] = [
        _AsyncAuthorizeUnaryUnary(header),
        _AsyncAuthorizeUnaryStream(header),
        _AsyncAuthorizeStreamUnary(header),
        _AsyncAuthorizeStreamStream(header),
    ]
    return grpc.aio.insecure_channel(plan.address, options=options, interceptors=interceptors)


# --------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class _Plan:
    """What a channel needs: the address, and either TLS credentials (with the token in them) or the bare header."""

    address: str
    credentials: grpc.ChannelCredentials | None
    header: tuple[str, str] | None  # only for plaintext with a token


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

    if not tls:
        return _Plan(address, None, ("authorization", f"Bearer {token}") if token else None)
    credentials = grpc.ssl_channel_credentials(root_certificates, private_key, certificate_chain)
    if token:
        credentials = grpc.composite_channel_credentials(credentials, grpc.access_token_call_credentials(token))
    return _Plan(address, credentials, None)


# --------------------------------------------------------------------------- the header over plaintext


class _CallDetails(grpc.ClientCallDetails):
    """A ``grpc.ClientCallDetails`` with other metadata (grpc's own class is private)."""

    def __init__(self, details: grpc.ClientCallDetails, metadata: tuple[tuple[str, str | bytes], ...]) -> None:
        self.method = details.method
        self.timeout = details.timeout
        self.metadata = metadata
        self.credentials = details.credentials
        self.wait_for_ready = details.wait_for_ready
        self.compression = details.compression


class _Authorize(
    grpc.UnaryUnaryClientInterceptor,
    grpc.UnaryStreamClientInterceptor,
    grpc.StreamUnaryClientInterceptor,
    grpc.StreamStreamClientInterceptor,
):
    """Adds the ``authorization`` header to every call of a blocking channel, after the caller's metadata."""

    def __init__(self, header: tuple[str, str]) -> None:
        self._header = header
        self._alone: tuple[tuple[str, str | bytes], ...] = (header,)

    def _details(self, details: grpc.ClientCallDetails) -> grpc.ClientCallDetails:
        metadata = details.metadata
        return _CallDetails(details, (*metadata, self._header) if metadata else self._alone)

    def intercept_unary_unary(
        self,
        continuation: Callable[[grpc.ClientCallDetails, _Req], _CallFuture[_Resp]],
        client_call_details: grpc.ClientCallDetails,
        request: _Req,
    ) -> _CallFuture[_Resp]:
        return continuation(self._details(client_call_details), request)

    def intercept_unary_stream(
        self,
        continuation: Callable[[grpc.ClientCallDetails, _Req], _CallIterator[_Resp]],
        client_call_details: grpc.ClientCallDetails,
        request: _Req,
    ) -> _CallIterator[_Resp]:
        return continuation(self._details(client_call_details), request)

    def intercept_stream_unary(
        self,
        continuation: Callable[[grpc.ClientCallDetails, Iterator[_Req]], _CallFuture[_Resp]],
        client_call_details: grpc.ClientCallDetails,
        request_iterator: Iterator[_Req],
    ) -> _CallFuture[_Resp]:
        return continuation(self._details(client_call_details), request_iterator)

    def intercept_stream_stream(
        self,
        continuation: Callable[[grpc.ClientCallDetails, Iterator[_Req]], _CallIterator[_Resp]],
        client_call_details: grpc.ClientCallDetails,
        request_iterator: Iterator[_Req],
    ) -> _CallIterator[_Resp]:
        return continuation(self._details(client_call_details), request_iterator)


class _AsyncAuthorize:
    """The ``authorization`` header for a ``grpc.aio`` channel: a copy of the call's metadata plus the header."""

    def __init__(self, header: tuple[str, str]) -> None:
        self._header = header

    def _details(self, details: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
        # grpc.aio gives the caller's own Metadata object when it passed one: copy, never mutate it.
        metadata = grpc.aio.Metadata(*(details.metadata or ()), self._header)
        return grpc.aio.ClientCallDetails(
            details.method, details.timeout, metadata, details.credentials, details.wait_for_ready
        )


class _AsyncAuthorizeUnaryUnary(_AsyncAuthorize, grpc.aio.UnaryUnaryClientInterceptor):
    async def intercept_unary_unary(
        self,
        continuation: Callable[[grpc.aio.ClientCallDetails, _Req], Awaitable[grpc.aio.UnaryUnaryCall[_Req, _Resp]]],
        client_call_details: grpc.aio.ClientCallDetails,
        request: _Req,
    ) -> _Resp | grpc.aio.UnaryUnaryCall[_Req, _Resp]:
        return await continuation(self._details(client_call_details), request)


class _AsyncAuthorizeUnaryStream(_AsyncAuthorize, grpc.aio.UnaryStreamClientInterceptor):
    async def intercept_unary_stream(
        self,
        continuation: Callable[[grpc.aio.ClientCallDetails, _Req], Awaitable[grpc.aio.UnaryStreamCall[_Req, _Resp]]],
        client_call_details: grpc.aio.ClientCallDetails,
        request: _Req,
    ) -> grpc.aio.UnaryStreamCall[_Req, _Resp]:
        return await continuation(self._details(client_call_details), request)


class _AsyncAuthorizeStreamUnary(_AsyncAuthorize, grpc.aio.StreamUnaryClientInterceptor):
    async def intercept_stream_unary(
        self,
        continuation: Callable[
            [grpc.aio.ClientCallDetails, AsyncIterable[_Req] | Iterable[_Req]],
            Awaitable[grpc.aio.StreamUnaryCall[_Req, _Resp]],
        ],
        client_call_details: grpc.aio.ClientCallDetails,
        request_iterator: AsyncIterable[_Req] | Iterable[_Req],
    ) -> _Resp | grpc.aio.StreamUnaryCall[_Req, _Resp]:
        return await continuation(self._details(client_call_details), request_iterator)


class _AsyncAuthorizeStreamStream(_AsyncAuthorize, grpc.aio.StreamStreamClientInterceptor):
    async def intercept_stream_stream(
        self,
        continuation: Callable[
            [grpc.aio.ClientCallDetails, AsyncIterable[_Req] | Iterable[_Req]],
            Awaitable[grpc.aio.StreamStreamCall[_Req, _Resp]],
        ],
        client_call_details: grpc.aio.ClientCallDetails,
        request_iterator: AsyncIterable[_Req] | Iterable[_Req],
    ) -> grpc.aio.StreamStreamCall[_Req, _Resp]:
        return await continuation(self._details(client_call_details), request_iterator)
