"""Native (tonic) gRPC transport of snakepit_bridge: serialized messages in and out.

Used through ``snakepit_bridge.connect`` / ``connect_async``; not an API of its own.
"""

#: Messages a stream holds that Python has not taken; past it the server coalesces.
STREAM_BUFFER: int

class Waker:
    """A socket an asyncio loop watches; calls post their tokens to it."""

    def __init__(self) -> None: ...
    def fileno(self) -> int:
        """The descriptor that is readable while tokens wait."""
    def drain(self) -> list[int]:
        """The tokens posted since the last drain, in order."""

class Call:
    """One RPC in flight: headers, messages and end as they come."""

    def headers(self) -> list[tuple[str, str]] | None:
        """Response headers once they came (``[]`` if the call ended without)."""
    def try_message(self) -> bytes | None:
        """The next message if one waits."""
    def end(self) -> tuple[int, str, list[tuple[str, str]]] | None:
        """``(code, details, trailers)`` once the call ended and every message was taken."""
    def status(self) -> tuple[int, str, list[tuple[str, str]]] | None:
        """``(code, details, trailers)`` once the call ended, messages left to take or not."""
    def arm(self, waker: Waker, token: int, what: int) -> bool:
        """Post ``token`` to ``waker`` once ``what`` is there (0 headers, 1 message, 2 end); False if already there."""
    def disarm(self, token: int) -> None:
        """Forget the waiter ``token`` (its wait was cancelled)."""
    def wait(self, what: int, timeout: float | None = None) -> bool:
        """Block, without the GIL, until ``what`` is there or ``timeout`` passed."""
    def cancel(self) -> None:
        """Cancel the call; its end becomes CANCELLED unless it had ended."""

class Channel:
    """A connection to one server, made at the first call."""

    def __init__(
        self,
        address: str,
        *,
        tls: bool = False,
        root_certificates: bytes | None = None,
        private_key: bytes | None = None,
        certificate_chain: bytes | None = None,
        max_receive_message_length: int | None = None,
        max_send_message_length: int | None = None,
    ) -> None: ...
    def call(self, method: str, request: bytes, metadata: list[tuple[str, str]], timeout: float | None = None) -> Call:
        """Start ``method`` with one serialized request."""
    def close(self) -> None:
        """Calls in flight end CANCELLED, later ones at once."""
    def is_closed(self) -> bool: ...
