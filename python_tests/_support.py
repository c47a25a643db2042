"""Test helpers shared by the test modules (imported as a plain module)."""

from __future__ import annotations

import asyncio
import inspect
import os
import re
import selectors
import signal
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import pytest
from snakepit_bridge import AsyncSessionContext, SessionContext

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_SERVER_BIN = REPO_ROOT / "target" / "release" / "snakepit-bridge-server"
STARTUP_DEADLINE = 20.0
_LISTENING = re.compile(r"^listening on (?P<host>\S+):(?P<port>\d+)\s*$")


def server_binary() -> Path:
    """The server under test: $SNAKEPIT_SERVER_BIN, else target/release/snakepit-bridge-server.

    Fails the test (never skips) when the binary is missing.
    """
    configured = os.environ.get("SNAKEPIT_SERVER_BIN")
    path = Path(configured) if configured else DEFAULT_SERVER_BIN
    if not path.is_file() or not os.access(path, os.X_OK):
        source = "$SNAKEPIT_SERVER_BIN" if configured else "the default location"
        pytest.fail(
            f"snakepit-bridge-server not found at {path} ({source}); "
            "build it with `cargo build --release` or set SNAKEPIT_SERVER_BIN",
            pytrace=False,
        )
    return path


@dataclass
class ServerProcess:
    """A running server binary; ``address`` is ``host:port``."""

    address: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def terminate(self, timeout: float = 10.0) -> int:
        """SIGTERM, then wait; SIGKILL if it ignores that. Returns the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


def start_server(
    log_dir: Path,
    *extra_args: str,
    listen: str = "127.0.0.1:0",
    env: Mapping[str, str | None] | None = None,
) -> ServerProcess:
    """Start the server on ``listen`` (default 127.0.0.1:0) and wait for its ``listening on HOST:PORT`` line.

    ``env``: changes to this process's environment for the server (``None``
    removes a variable), see :func:`server_env`.

    Fails the test with the server's output if the line does not come within
    STARTUP_DEADLINE seconds or the process exits first.
    """
    binary = server_binary()
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"server-{time.monotonic_ns()}.log"
    log_file = open(log_path, "wb")
    process = subprocess.Popen(
        [str(binary), "--listen", listen, *extra_args],
        stdout=subprocess.PIPE,
        stderr=log_file,
        stdin=subprocess.DEVNULL,
        bufsize=0,
        env=server_env(env) if env is not None else None,
    )
    log_file.close()
    assert process.stdout is not None
    first_line = _read_first_line(process, STARTUP_DEADLINE)
    match = _LISTENING.match(first_line.decode("utf-8", "replace"))
    if match is None:
        process.kill()
        process.wait()
        process.stdout.close()
        pytest.fail(
            f"{binary} did not print 'listening on HOST:PORT' as its first line within "
            f"{STARTUP_DEADLINE}s (exit code {process.returncode}); first line: {first_line!r}; "
            f"stderr:\n{log_path.read_text(errors='replace')}",
            pytrace=False,
        )
    # Keep draining stdout so a chatty server never blocks on a full pipe.
    threading.Thread(target=_drain, args=(process.stdout, log_path), daemon=True).start()
    return ServerProcess(f"{match['host']}:{match['port']}", process, log_path)


def server_env(changes: Mapping[str, str | None]) -> dict[str, str]:
    """This process's environment with ``changes`` applied (a ``None`` value removes the variable)."""
    env = dict(os.environ)
    for key, value in changes.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


def _read_first_line(process: subprocess.Popen[bytes], deadline_s: float) -> bytes:
    assert process.stdout is not None
    buf = b""
    deadline = time.monotonic() + deadline_s
    with selectors.DefaultSelector() as sel:
        sel.register(process.stdout, selectors.EVENT_READ)
        while b"\n" not in buf:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not sel.select(remaining):
                break
            chunk = os.read(process.stdout.fileno(), 4096)
            if not chunk:  # EOF: the process exited or closed stdout
                break
            buf += chunk
    return buf.split(b"\n", 1)[0]


def _drain(stream: Any, log_path: Path) -> None:
    with stream, open(log_path, "ab") as out:
        while chunk := stream.read(4096):
            out.write(chunk)


AnyContext = SessionContext | AsyncSessionContext


def context_for(session_id: str, channel: Any) -> AnyContext:
    """The context class of the channel's mode: AsyncSessionContext for grpc.aio, SessionContext otherwise."""
    if isinstance(channel, grpc.aio.Channel):
        return AsyncSessionContext(session_id, channel)
    return SessionContext(session_id, channel)


class AnyMode:
    """Wraps a SessionContext or an AsyncSessionContext so one test body covers both modes.

    Every method call is awaited. It also checks the mode's contract on every
    call: an aio context must return an awaitable, a blocking one a plain value.
    """

    def __init__(self, ctx: AnyContext) -> None:
        self.ctx = ctx

    @property
    def mode(self) -> str:
        return "aio" if self.ctx.is_async else "blocking"

    @property
    def session_id(self) -> str:
        return self.ctx.session_id

    def __getattr__(self, name: str) -> Callable[..., Coroutine[Any, Any, Any]]:
        method = getattr(self.ctx, name)
        assert callable(method), name

        async def call(*args: Any, **kwargs: Any) -> Any:
            result = method(*args, **kwargs)
            if self.ctx.is_async:
                assert inspect.isawaitable(result), f"aio {name}() must return an awaitable"
                return await result
            assert not inspect.isawaitable(result), f"blocking {name}() returned an awaitable"
            return result

        return call


# --------------------------------------------------------------------------- watch helpers

POLL_DEADLINE = 30.0  # seconds before a polled condition fails the test (never a timing claim)


async def eventually(condition: Callable[[], Any], what: str, deadline: float = POLL_DEADLINE) -> None:
    """Poll ``condition`` (a function, possibly async) until it is truthy; fail after ``deadline`` seconds."""
    end = time.monotonic() + deadline
    while True:
        result = condition()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return
        if time.monotonic() > end:
            pytest.fail(f"timed out after {deadline}s waiting for {what}", pytrace=False)
        await asyncio.sleep(0.01)


async def within(awaitable: Any, what: str, deadline: float = POLL_DEADLINE) -> Any:
    """Await ``awaitable``, failing the test (instead of hanging) after ``deadline`` seconds."""
    try:
        return await asyncio.wait_for(awaitable, deadline)
    except asyncio.TimeoutError:
        pytest.fail(f"timed out after {deadline}s waiting for {what}", pytrace=False)


async def watcher_count(ctx: Any) -> int:
    """The session's live watchers, through a SessionContext of either mode (or an AnyMode)."""
    if isinstance(ctx, AnyMode):
        info = await ctx.get_session()
    else:
        result = ctx.get_session()
        info = await result if inspect.isawaitable(result) else result
    return int(info["watcher_count"])


async def wait_for_watchers(ctx: Any, expected: int) -> None:
    """Poll GetSession until ``watcher_count == expected``."""
    seen: list[int] = []

    async def check() -> bool:
        seen.append(await watcher_count(ctx))
        return seen[-1] == expected

    await eventually(check, f"watcher_count == {expected} (last seen {seen[-1:]})")


def wait_for_watchers_blocking(ctx: SessionContext, expected: int, deadline: float = POLL_DEADLINE) -> None:
    """``wait_for_watchers`` for plain (non-async) tests, with a blocking context."""
    end = time.monotonic() + deadline
    while (count := ctx.get_session()["watcher_count"]) != expected:
        if time.monotonic() > end:
            pytest.fail(f"timed out after {deadline}s waiting for watcher_count == {expected} (last {count})")
        time.sleep(0.01)


_END: Any = object()


def _next_or_end(watch: Any) -> Any:
    try:
        return next(watch)
    except StopIteration:
        return _END


class WatchDriver:
    """Drives a VariableWatch (blocking, on a worker thread) or an AsyncVariableWatch from async tests.

    ``next()`` raises StopAsyncIteration at the end in both modes.
    """

    def __init__(self, watch: Any) -> None:
        self.watch = watch
        self.is_async = hasattr(watch, "__anext__")

    async def next(self) -> Any:
        if self.is_async:
            return await self.watch.__anext__()
        update = await asyncio.to_thread(_next_or_end, self.watch)
        if update is _END:
            raise StopAsyncIteration
        return update

    async def start(self) -> None:
        if self.is_async:
            await self.watch.start()
        else:
            await asyncio.to_thread(self.watch.start)

    async def close(self) -> None:
        if self.is_async:
            await self.watch.aclose()
        else:
            self.watch.close()

    async def rest(self) -> list[Any]:
        """Every update until the iteration ends."""
        out = []
        while True:
            try:
                out.append(await self.next())
            except StopAsyncIteration:
                return out

    async def until(self, predicate: Callable[[Any], bool]) -> list[Any]:
        """Updates up to and including the first one ``predicate`` accepts."""
        out = []
        while True:
            update = await self.next()
            out.append(update)
            if predicate(update):
                return out


# --------------------------------------------------------------------------- servers that go away


def free_port() -> int:
    """A TCP port nobody listens on right now (bind port 0, read it, release it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RestartableServer:
    """The server binary on one fixed port, which can be stopped and started again there."""

    def __init__(self, log_dir: Path, port: int) -> None:
        self.log_dir = log_dir
        self.port = port
        self.address = f"127.0.0.1:{port}"
        self.current: ServerProcess | None = None

    def start(self) -> None:
        """Start it on the port; retried a few times while the port is still being released."""
        end = time.monotonic() + STARTUP_DEADLINE
        while True:
            try:
                self.current = start_server(self.log_dir, listen=self.address)
                return
            except pytest.fail.Exception:
                if time.monotonic() > end:
                    raise
                time.sleep(0.1)

    def stop(self, kill: bool = False) -> None:
        """SIGTERM (graceful: open watch streams end with UNAVAILABLE) or SIGKILL."""
        if self.current is None:
            return
        if kill:
            self.current.process.kill()
            self.current.process.wait()
        else:
            assert self.current.terminate() == 0, self.current.log()
        self.current = None

    def restart(self, kill: bool = False) -> None:
        self.stop(kill)
        self.start()


class TcpProxy:
    """A TCP forwarder in front of the server that can cut every connection, or refuse new ones.

    ``drop()`` closes the open connections (clients see the connection reset,
    the server sees them end); ``block()`` makes new connections close at once
    until ``unblock()``. ``accepted`` counts connections forwarded.
    """

    def __init__(self, target: str) -> None:
        host, port = target.rsplit(":", 1)
        self._target = (host, int(port))
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self._listener.getsockname()[1]}"
        self._lock = threading.Lock()
        self._open: list[socket.socket] = []
        self._blocked = False
        self._closed = False
        self.accepted = 0
        # host:port of each connection's end at the proxy, as the server sees its peer.
        self.upstream_addresses: list[str] = []
        threading.Thread(target=self._accept_loop, daemon=True).start()

    def _accept_loop(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return  # closed
            with self._lock:
                refuse = self._blocked or self._closed
            if refuse:
                _abort(client)
                continue
            try:
                upstream = socket.create_connection(self._target)
            except OSError:
                _abort(client)
                continue
            host, port = upstream.getsockname()[:2]
            with self._lock:
                self._open += [client, upstream]
                self.accepted += 1
                self.upstream_addresses.append(f"{host}:{port}")
            threading.Thread(target=self._pump, args=(client, upstream), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        for sock in (src, dst):
            _abort(sock)

    def drop(self) -> None:
        """Reset every open connection."""
        with self._lock:
            conns, self._open = self._open, []
        for sock in conns:
            _abort(sock)

    def block(self) -> None:
        with self._lock:
            self._blocked = True
        self.drop()

    def unblock(self) -> None:
        with self._lock:
            self._blocked = False

    def close(self) -> None:
        with self._lock:
            self._closed = True
        self._listener.close()
        self.drop()


def _abort(sock: socket.socket) -> None:
    """End a connection now: shutdown wakes the pump blocked in recv, linger 0 makes close reset it."""
    for step in (
        lambda: sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)),
        lambda: sock.shutdown(socket.SHUT_RDWR),
        sock.close,
    ):
        try:
            step()
        except OSError:
            pass


# --------------------------------------------------------------------------- certificates (openssl CLI)


@dataclass(frozen=True)
class Certificate:
    """A PEM certificate and its unencrypted PEM private key, as files."""

    cert: Path
    key: Path

    def cert_pem(self) -> bytes:
        return self.cert.read_bytes()

    def key_pem(self) -> bytes:
        return self.key.read_bytes()


def openssl(*args: str) -> None:
    """Run the ``openssl`` CLI; fails the test with its output if it fails."""
    try:
        subprocess.run(["openssl", *args], check=True, capture_output=True, stdin=subprocess.DEVNULL, timeout=60)
    except FileNotFoundError:
        pytest.fail("the openssl CLI is needed to make test certificates", pytrace=False)
    except subprocess.CalledProcessError as exc:
        pytest.fail(f"openssl {' '.join(args)} failed:\n{exc.stderr.decode(errors='replace')}", pytrace=False)


def self_signed_certificate(directory: Path, name: str = "server") -> Certificate:
    """A self-signed server certificate for ``localhost`` and 127.0.0.1, valid one day."""
    directory.mkdir(parents=True, exist_ok=True)
    made = Certificate(directory / f"{name}.pem", directory / f"{name}.key")
    openssl(
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost",
        "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1", "-days", "1",
        "-keyout", str(made.key), "-out", str(made.cert),
    )  # fmt: skip
    return made


def certificate_authority(directory: Path, name: str = "ca") -> Certificate:
    """A self-signed CA certificate (basicConstraints CA:TRUE), valid one day."""
    directory.mkdir(parents=True, exist_ok=True)
    made = Certificate(directory / f"{name}.pem", directory / f"{name}.key")
    openssl(
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN=snakepit test {name}", "-days", "1",
        "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        "-keyout", str(made.key), "-out", str(made.cert),
    )  # fmt: skip
    return made


def client_certificate(directory: Path, ca: Certificate, name: str = "client") -> Certificate:
    """An end-entity certificate for TLS client authentication, signed by ``ca``, valid one day."""
    return _signed_certificate(directory, ca, name, "extendedKeyUsage=clientAuth\n")


def server_certificate(directory: Path, ca: Certificate, name: str = "server") -> Certificate:
    """An end-entity server certificate for ``localhost`` and 127.0.0.1, signed by ``ca``, valid one day.

    What a CA-run deployment has; rustls (the native transport's TLS) accepts
    it, where it refuses :func:`self_signed_certificate` (a CA certificate used
    as the server's own).
    """
    return _signed_certificate(
        directory, ca, name, "extendedKeyUsage=serverAuth\nsubjectAltName=DNS:localhost,IP:127.0.0.1\n"
    )


def _signed_certificate(directory: Path, ca: Certificate, name: str, extensions_text: str) -> Certificate:
    directory.mkdir(parents=True, exist_ok=True)
    made = Certificate(directory / f"{name}.pem", directory / f"{name}.key")
    csr = directory / f"{name}.csr"
    extensions = directory / f"{name}.ext"
    extensions.write_text("basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n" + extensions_text)
    openssl(
        "req", "-new", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}",
        "-keyout", str(made.key), "-out", str(csr),
    )  # fmt: skip
    openssl(
        "x509", "-req", "-in", str(csr), "-CA", str(ca.cert), "-CAkey", str(ca.key), "-set_serial",
        str(int.from_bytes(os.urandom(8), "big")), "-days", "1", "-extfile", str(extensions), "-out", str(made.cert),
    )  # fmt: skip
    return made


# --------------------------------------------------------------------------- health and reflection by hand
# (the few protobuf fields they need, encoded by hand: see test_operability.py, which tests the encoding)

HEALTH_SERVING = 1
REFLECTION_V1 = "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"


def pb_string_field(number: int, value: str) -> bytes:
    """A length-delimited protobuf field: tag, length, UTF-8 bytes."""
    data = value.encode()
    return _pb_varint(number << 3 | 2) + _pb_varint(len(data)) + data


def pb_fields(data: bytes) -> list[tuple[int, int | bytes]]:
    """The top-level fields of a message as (number, value): ints for varints, bytes for length-delimited."""
    out: list[tuple[int, int | bytes]] = []
    pos = 0
    while pos < len(data):
        key, pos = _pb_read_varint(data, pos)
        if key & 7 == 0:
            value, pos = _pb_read_varint(data, pos)
            out.append((key >> 3, value))
        elif key & 7 == 2:
            length, pos = _pb_read_varint(data, pos)
            out.append((key >> 3, data[pos : pos + length]))
            pos += length
        else:
            raise AssertionError(f"unexpected wire type {key & 7}")
    return out


def _pb_varint(n: int) -> bytes:
    out = bytearray()
    while True:
        low, n = n & 0x7F, n >> 7
        out.append(low | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _pb_read_varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, pos


def health_check(channel: grpc.Channel, service: str = "", timeout: float = 10.0) -> int:
    """grpc.health.v1.Health/Check: the status (1 SERVING, 2 NOT_SERVING); a failed call raises grpc.RpcError."""
    response: bytes = channel.unary_unary("/grpc.health.v1.Health/Check")(pb_string_field(1, service), timeout=timeout)
    statuses = [value for number, value in pb_fields(response) if number == 1]
    return int(statuses[-1]) if statuses else 0


def list_services(channel: grpc.Channel, method: str = REFLECTION_V1, timeout: float = 10.0) -> list[str]:
    """Server reflection's list_services; a failed call raises grpc.RpcError."""
    responses = list(channel.stream_stream(method)(iter([pb_string_field(7, "")]), timeout=timeout))
    assert len(responses) == 1, responses
    [listing] = [v for n, v in pb_fields(responses[0]) if n == 6 and isinstance(v, bytes)]
    services = [v for n, v in pb_fields(listing) if n == 1 and isinstance(v, bytes)]
    return [
        name.decode() for service in services for n, name in pb_fields(service) if n == 1 and isinstance(name, bytes)
    ]


def is_repeated_field(fd: Any) -> bool:
    """Whether a protobuf field descriptor is repeated: ``is_repeated`` on newer protobuf (7.x has no ``label``),
    ``label`` on 4.25 (the floor of the supported range)."""
    is_repeated = getattr(fd, "is_repeated", None)
    if is_repeated is not None:
        return bool(is_repeated)
    return bool(fd.label == fd.LABEL_REPEATED)
