"""The native transport: grpc-shaped channels whose calls run in ``snakepit_bridge_native`` (tonic).

:func:`~snakepit_bridge.connect` and :func:`~snakepit_bridge.connect_async`
return these when the extension is installed (``transport="auto"``, the
default). They implement what the package's generated stubs use — unary and
server-streaming calls — so the contexts and watches run unchanged on either
transport: requests are serialized and responses parsed by the same protobuf
classes; only HTTP/2 moves out of Python.

Under asyncio one :class:`~snakepit_bridge_native.Waker` per event loop tells
the loop that calls have news: a socket ``loop.add_reader`` watches, written
once per burst however many messages arrive, so a busy watcher pays one
wake-up for many messages. Blocking calls wait in the extension without the GIL.

Errors are grpc's: ``grpc.aio.AioRpcError`` from asyncio calls, an
:class:`NativeRpcError` (a ``grpc.RpcError`` with ``code()``, ``details()``,
``trailing_metadata()``) from blocking ones. What the extension does not do —
client-streaming and bidirectional calls (server reflection is one),
connectivity (``subscribe``, ``wait_for_state_change``, ``channel_ready``) and
blocking ``future()`` calls — goes to a grpcio channel to the same server with
the same token, opened the first time it is needed and closed with this one.
"""

from __future__ import annotations

import asyncio
import itertools
import weakref
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import grpc
import grpc.aio

try:
    import snakepit_bridge_native as _ext
except ImportError:  # the portable fallback: grpcio only
    _ext = None  # type: ignore[assignment]

__all__ = ["AVAILABLE", "SUPPORTED_OPTIONS", "AsyncNativeChannel", "NativeChannel", "NativeRpcError", "open_native"]

#: Whether the extension is installed (``pip install native/snakepit_py``).
AVAILABLE = _ext is not None
#: The grpc channel options the native transport honours. Every native channel
#: has a connection of its own, so ``grpc.use_local_subchannel_pool`` (asking
#: grpcio for that) is already true there.
SUPPORTED_OPTIONS = frozenset(
    {"grpc.max_receive_message_length", "grpc.max_send_message_length", "grpc.use_local_subchannel_pool"}
)
_SIZE_OPTIONS = ("grpc.max_receive_message_length", "grpc.max_send_message_length")

_HEADERS, _MESSAGE, _END = 0, 1, 2
_CODES = {code.value[0]: code for code in grpc.StatusCode}

if TYPE_CHECKING:  # the stubs make these generic; at runtime (grpcio >= 1.62) they may not be subscriptable
    _UnaryUnaryBase = grpc.UnaryUnaryMultiCallable[Any, Any]
    _UnaryStreamBase = grpc.UnaryStreamMultiCallable[Any, Any]
    _AsyncUnaryUnaryBase = grpc.aio.UnaryUnaryMultiCallable[Any, Any]
    _AsyncUnaryStreamBase = grpc.aio.UnaryStreamMultiCallable[Any, Any]
else:
    _UnaryUnaryBase = grpc.UnaryUnaryMultiCallable
    _UnaryStreamBase = grpc.UnaryStreamMultiCallable
    _AsyncUnaryUnaryBase = grpc.aio.UnaryUnaryMultiCallable
    _AsyncUnaryStreamBase = grpc.aio.UnaryStreamMultiCallable

Serializer = Callable[[Any], bytes]
Deserializer = Callable[[bytes], Any]
Pairs = list[tuple[str, str]]


def _status(code: int) -> grpc.StatusCode:
    return _CODES.get(code, grpc.StatusCode.UNKNOWN)


class NativeRpcError(grpc.RpcError):
    """A failed blocking call of the native transport, readable as grpc's ``RpcError`` is."""

    def __init__(self, code: int, details: str, initial: Pairs, trailing: Pairs) -> None:
        super().__init__(f"{_status(code).name}: {details}")
        self._code = _status(code)
        self._details = details
        self._initial = tuple(initial)
        self._trailing: tuple[tuple[str, str | bytes], ...] = tuple(trailing)

    def code(self) -> grpc.StatusCode:
        """The status code."""
        return self._code

    def details(self) -> str:
        """The status message."""
        return self._details

    def initial_metadata(self) -> tuple[tuple[str, str], ...]:
        """The response headers (empty when the call failed before them)."""
        return self._initial

    # types-grpcio declares an object type here; grpc itself returns (key, value) tuples, as this does.
    def trailing_metadata(self) -> tuple[tuple[str, str | bytes], ...]:  # type: ignore[override]
        """The trailers."""
        return self._trailing

    def debug_error_string(self) -> str:
        """What grpcio would call its debug string: the code and details."""
        return str(self)


def _metadata(header: tuple[str, str] | None, given: Sequence[tuple[str, Any]] | None) -> Pairs:
    pairs = [header] if header is not None else []
    for key, value in given or ():
        if not isinstance(value, str):
            raise ValueError(
                f"metadata {key!r}: the native transport sends text values only; got {type(value).__name__}"
            )
        pairs.append((key, value))
    return pairs


def _options(options: Sequence[tuple[str, Any]] | None) -> dict[str, int]:
    limits: dict[str, int] = {}
    for key, value in options or ():
        if key not in SUPPORTED_OPTIONS:
            raise ValueError(
                f"channel option {key!r} is not supported by the native transport (transport='grpc' has it)"
            )
        if key in _SIZE_OPTIONS and int(value) >= 0:  # grpc's -1: no limit
            limits[key.removeprefix("grpc.")] = int(value)
    return limits


def _open(
    address: str,
    tls: bool,
    root_certificates: bytes | None,
    private_key: bytes | None,
    certificate_chain: bytes | None,
    options: Sequence[tuple[str, Any]] | None,
) -> Any:
    if _ext is None:
        raise RuntimeError("snakepit_bridge_native is not installed (pip install native/snakepit_py)")
    return _ext.Channel(
        address,
        tls=tls,
        root_certificates=root_certificates,
        private_key=private_key,
        certificate_chain=certificate_chain,
        **_options(options),
    )


# --------------------------------------------------------------------------- what both channels share


class _Multicallable:
    """A method of a channel: its path, how its messages are (de)serialized, and the channel."""

    def __init__(self, owner: Any, method: str, serialize: Serializer, deserialize: Deserializer) -> None:
        self._owner, self._method, self._serialize, self._deserialize = owner, method, serialize, deserialize

    def _start(self, request: Any, metadata: Sequence[tuple[str, Any]] | None, timeout: float | None) -> Any:
        return self._owner._start(self._method, self._serialize(request), metadata, timeout)


class _NativeBase:
    """The extension's channel, the token header, and the grpcio channel opened for what the extension does not do.

    Subclasses name the error a closed channel raises and their multicallable classes.
    """

    _closed_error: type[Exception]
    _unary: type[_Multicallable]
    _stream: type[_Multicallable]

    def __init__(self, native: Any, header: tuple[str, str] | None, fallback: Callable[[], Any]) -> None:
        self._native = native
        self._header = header
        self._open_fallback = fallback
        self._fallback: Any = None

    def _grpc(self) -> Any:
        """The grpcio channel for what the extension does not do (opened now if not yet)."""
        if self._native.is_closed():
            raise self._closed_error("Cannot invoke RPC on closed channel!")
        if self._fallback is None:
            self._fallback = self._open_fallback()
        return self._fallback

    def _start(
        self, method: str, request: bytes, metadata: Sequence[tuple[str, Any]] | None, timeout: float | None
    ) -> Any:
        if self._native.is_closed():
            raise self._closed_error("Cannot invoke RPC on closed channel!")  # grpcio's words for the same mistake
        return self._native.call(method, request, _metadata(self._header, metadata), timeout)

    def unary_unary(
        self,
        method: str,
        request_serializer: Serializer | None = None,
        response_deserializer: Deserializer | None = None,
        *_: Any,
        **__: Any,
    ) -> Any:
        return self._unary(self, method, request_serializer or bytes, response_deserializer or bytes)

    def unary_stream(
        self,
        method: str,
        request_serializer: Serializer | None = None,
        response_deserializer: Deserializer | None = None,
        *_: Any,
        **__: Any,
    ) -> Any:
        return self._stream(self, method, request_serializer or bytes, response_deserializer or bytes)

    def stream_unary(self, *args: Any, **kwargs: Any) -> Any:
        return self._grpc().stream_unary(*args, **kwargs)

    def stream_stream(self, *args: Any, **kwargs: Any) -> Any:
        return self._grpc().stream_stream(*args, **kwargs)


# --------------------------------------------------------------------------- blocking


class _BlockingUnary(_Multicallable, _UnaryUnaryBase):
    def __call__(  # type: ignore[override]
        self, request: Any, timeout: float | None = None, metadata: Sequence[tuple[str, Any]] | None = None, **_: Any
    ) -> Any:
        return self.with_call(request, timeout, metadata)[0]

    def with_call(  # type: ignore[override]
        self, request: Any, timeout: float | None = None, metadata: Sequence[tuple[str, Any]] | None = None, **_: Any
    ) -> tuple[Any, NativeStreamCall]:
        call = self._start(request, metadata, timeout)
        call.wait(_END)
        return _unary_result(call, self._deserialize, _blocking_error), NativeStreamCall(call, self._deserialize)

    def future(self, *args: Any, **kwargs: Any) -> Any:
        return self._owner._grpc().unary_unary(self._method, self._serialize, self._deserialize).future(*args, **kwargs)


class _BlockingStream(_Multicallable, _UnaryStreamBase):
    def __call__(  # type: ignore[override]
        self, request: Any, timeout: float | None = None, metadata: Sequence[tuple[str, Any]] | None = None, **_: Any
    ) -> NativeStreamCall:
        return NativeStreamCall(self._start(request, metadata, timeout), self._deserialize)


def _blocking_error(call: Any, end: tuple[int, str, Pairs]) -> BaseException:
    return NativeRpcError(end[0], end[1], call.headers() or [], end[2])


def _unary_result(
    call: Any, deserialize: Deserializer, error: Callable[[Any, tuple[int, str, Pairs]], BaseException]
) -> Any:
    message = call.try_message()
    end = call.end()
    if end is None:  # a second message came: not a unary response
        call.cancel()
        raise error(call, (grpc.StatusCode.INTERNAL.value[0], "the server sent more than one response message", []))
    if end[0] != 0:
        raise error(call, end)
    if message is None:
        raise error(call, (grpc.StatusCode.INTERNAL.value[0], "the server sent no response message", end[2]))
    return deserialize(message)


class NativeStreamCall(Iterator[Any]):
    """A blocking server-streaming call: iterate for messages; as grpc's response iterator."""

    def __init__(self, call: Any, deserialize: Deserializer) -> None:
        self._call = call
        self._deserialize = deserialize

    def __iter__(self) -> NativeStreamCall:
        return self

    def __next__(self) -> Any:
        call = self._call
        while True:
            message = call.try_message()
            if message is not None:
                return self._deserialize(message)
            end = call.end()
            if end is not None:
                if end[0] == 0:
                    raise StopIteration
                raise _blocking_error(call, end)
            call.wait(_MESSAGE)

    def initial_metadata(self) -> tuple[tuple[str, str], ...]:
        """The response headers; waits for them (empty if the call ended without)."""
        self._call.wait(_HEADERS)
        return tuple(self._call.headers() or ())

    def trailing_metadata(self) -> tuple[tuple[str, str], ...] | None:
        """The trailers once the call ended (and every message was read), else ``None``."""
        end = self._call.end()
        return None if end is None else tuple(end[2])

    def code(self) -> grpc.StatusCode | None:
        """The status code once the call ended (and every message was read), else ``None``."""
        end = self._call.end()
        return None if end is None else _status(end[0])

    def details(self) -> str | None:
        """The status message once the call ended, else ``None``."""
        end = self._call.end()
        return None if end is None else end[1]

    def is_active(self) -> bool:
        """Whether the call has not ended (or has messages left)."""
        return self._call.end() is None

    def cancel(self) -> bool:
        """Cancel the call (the server sees the stream reset). Idempotent."""
        self._call.cancel()
        return True


class NativeChannel(_NativeBase, grpc.Channel):
    """A blocking channel on the native transport (see the module docs); made by :func:`~snakepit_bridge.connect`."""

    _closed_error = ValueError
    _unary = _BlockingUnary
    _stream = _BlockingStream

    def subscribe(self, callback: Callable[[grpc.ChannelConnectivity], None], try_to_connect: bool = False) -> None:
        self._grpc().subscribe(callback, try_to_connect)

    def unsubscribe(self, callback: Callable[[grpc.ChannelConnectivity], None]) -> None:
        self._grpc().unsubscribe(callback)

    def close(self) -> None:
        """Close the channel (and the grpcio one, if opened): calls in flight end CANCELLED. Idempotent."""
        self._native.close()
        if self._fallback is not None:
            self._fallback.close()

    def __enter__(self) -> NativeChannel:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()


# --------------------------------------------------------------------------- asyncio


class _LoopWaker:
    """An event loop's link to the extension: one Waker, one reader, futures by token."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        assert _ext is not None
        self.waker = _ext.Waker()
        self._futures: dict[int, asyncio.Future[None]] = {}
        self._tokens = itertools.count(1)
        loop.add_reader(self.waker.fileno(), self._ready)

    def _ready(self) -> None:
        for token in self.waker.drain():
            future = self._futures.pop(token, None)
            if future is not None and not future.done():
                future.set_result(None)

    async def wait(self, call: Any, what: int) -> None:
        """Return once ``what`` (or the call's end) is there."""
        token = next(self._tokens)
        if not call.arm(self.waker, token, what):
            return
        future = asyncio.get_running_loop().create_future()
        self._futures[token] = future
        try:
            await future
        finally:
            if self._futures.pop(token, None) is not None:  # cancelled before the news came
                call.disarm(token)


# Weak keys: a closed, forgotten loop takes its waker (and socket pair) with it.
_LOOP_WAKERS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopWaker] = weakref.WeakKeyDictionary()


def _loop_waker() -> _LoopWaker:
    loop = asyncio.get_running_loop()
    waker = _LOOP_WAKERS.get(loop)
    if waker is None:
        waker = _LOOP_WAKERS[loop] = _LoopWaker(loop)
    return waker


def _aio_error(call: Any, end: tuple[int, str, Pairs]) -> BaseException:
    return grpc.aio.AioRpcError(
        _status(end[0]),
        grpc.aio.Metadata(*(call.headers() or ())),
        grpc.aio.Metadata(*end[2]),
        details=end[1],
    )


class _AsyncUnary(_Multicallable, _AsyncUnaryUnaryBase):
    def __call__(  # type: ignore[override]
        self, request: Any, *, timeout: float | None = None, metadata: Sequence[tuple[str, Any]] | None = None, **_: Any
    ) -> Any:
        return self._result(self._start(request, metadata, timeout))

    async def _result(self, call: Any) -> Any:
        try:
            await _loop_waker().wait(call, _END)
        except BaseException:
            call.cancel()
            raise
        return _unary_result(call, self._deserialize, _aio_error)


class _AsyncStream(_Multicallable, _AsyncUnaryStreamBase):
    def __call__(  # type: ignore[override]
        self, request: Any, *, timeout: float | None = None, metadata: Sequence[tuple[str, Any]] | None = None, **_: Any
    ) -> AsyncNativeStreamCall:
        return AsyncNativeStreamCall(self._start(request, metadata, timeout), self._deserialize, self._owner)


class AsyncNativeStreamCall:
    """An asyncio server-streaming call, as grpc.aio's: ``await read()`` (``grpc.aio.EOF`` at the end) or ``async for``.

    After :meth:`cancel` (or closing the channel), ``read`` raises
    ``asyncio.CancelledError``, as grpc.aio does.
    """

    def __init__(self, call: Any, deserialize: Deserializer, owner: AsyncNativeChannel) -> None:
        self._call = call
        self._deserialize = deserialize
        self._owner = owner
        self._cancelled = False

    async def read(self) -> Any:
        """The next message, or ``grpc.aio.EOF`` after the last; raises ``grpc.aio.AioRpcError`` if the call failed."""
        call = self._call
        while True:
            message = call.try_message()
            if message is not None:
                return self._deserialize(message)
            end = call.end()
            if end is not None:
                if self._cancelled or self._owner._native.is_closed():
                    raise asyncio.CancelledError
                if end[0] == 0:
                    return grpc.aio.EOF
                raise _aio_error(call, end)
            await _loop_waker().wait(call, _MESSAGE)

    async def __aiter__(self) -> AsyncIterator[Any]:
        while (message := await self.read()) is not grpc.aio.EOF:
            yield message

    async def initial_metadata(self) -> grpc.aio.Metadata:
        """The response headers; waits for them (empty if the call ended without)."""
        await _loop_waker().wait(self._call, _HEADERS)
        return grpc.aio.Metadata(*(self._call.headers() or ()))

    async def trailing_metadata(self) -> grpc.aio.Metadata:
        """The trailers; waits for the end (messages not yet read stay readable)."""
        return grpc.aio.Metadata(*(await self._status())[2])

    async def code(self) -> grpc.StatusCode:
        """The status code; waits for the end (messages not yet read stay readable)."""
        return _status((await self._status())[0])

    async def _status(self) -> tuple[int, str, Pairs]:
        await _loop_waker().wait(self._call, _END)
        status: tuple[int, str, Pairs] | None = self._call.status()
        assert status is not None  # the wait returns only once the call has ended
        return status

    def done(self) -> bool:
        """Whether the call ended and every message was read."""
        return self._call.end() is not None

    def cancelled(self) -> bool:
        """Whether :meth:`cancel` was called."""
        return self._cancelled

    def cancel(self) -> bool:
        """Cancel the call (the server sees the stream reset); ``False`` if it had already ended."""
        if self._cancelled or self.done():
            return False
        self._cancelled = True
        self._call.cancel()
        return True


class AsyncNativeChannel(_NativeBase, grpc.aio.Channel):
    """An asyncio channel on the native transport (see the module docs); made by :func:`~snakepit_bridge.connect_async`."""

    _closed_error = grpc.aio.UsageError
    _unary = _AsyncUnary
    _stream = _AsyncStream

    def get_state(self, try_to_connect: bool = False) -> grpc.ChannelConnectivity:
        """``SHUTDOWN`` once closed; else the grpc.aio channel's state if it was opened, or ``IDLE``."""
        if self._native.is_closed():
            return grpc.ChannelConnectivity.SHUTDOWN
        if self._fallback is None and not try_to_connect:
            return grpc.ChannelConnectivity.IDLE
        state: grpc.ChannelConnectivity = self._grpc().get_state(try_to_connect)
        return state

    async def wait_for_state_change(self, last_observed_state: grpc.ChannelConnectivity) -> None:
        await self._grpc().wait_for_state_change(last_observed_state)

    async def channel_ready(self) -> None:
        await self._grpc().channel_ready()

    async def close(self, grace: float | None = None) -> None:
        """Close the channel (and the grpc.aio one, if opened): calls in flight end. Idempotent."""
        self._native.close()
        if self._fallback is not None:
            await self._fallback.close(grace)

    async def __aenter__(self) -> AsyncNativeChannel:
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        await self.close()


_Channel = TypeVar("_Channel", bound=_NativeBase)


def open_native(
    channel_class: type[_Channel],
    address: str,
    header: tuple[str, str] | None,
    fallback: Callable[[], Any],
    *,
    tls: bool,
    root_certificates: bytes | None,
    private_key: bytes | None,
    certificate_chain: bytes | None,
    options: Sequence[tuple[str, Any]] | None,
) -> _Channel:
    """A :class:`NativeChannel` or :class:`AsyncNativeChannel`; ``fallback`` opens the grpcio channel of the
    same kind for what the extension does not do.

    Raises ValueError for an option it does not support.
    """
    return channel_class(
        _open(address, tls, root_certificates, private_key, certificate_chain, options), header, fallback
    )
