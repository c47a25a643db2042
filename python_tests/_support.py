"""Test helpers shared by the test modules (imported as a plain module)."""

from __future__ import annotations

import inspect
import os
import re
import selectors
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from snakepit_bridge import SessionContext

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


def start_server(log_dir: Path, *extra_args: str) -> ServerProcess:
    """Start the server on 127.0.0.1:0 and wait for its ``listening on HOST:PORT`` line.

    Fails the test with the server's output if the line does not come within
    STARTUP_DEADLINE seconds or the process exits first.
    """
    binary = server_binary()
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"server-{time.monotonic_ns()}.log"
    log_file = open(log_path, "wb")
    process = subprocess.Popen(
        [str(binary), "--listen", "127.0.0.1:0", *extra_args],
        stdout=subprocess.PIPE,
        stderr=log_file,
        stdin=subprocess.DEVNULL,
        bufsize=0,
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


class AnyMode:
    """Wraps a SessionContext of either mode so one test body covers both.

    Every method call is awaited. It also checks the mode's contract on every
    call: an aio context must return an awaitable, a blocking one a plain value.
    """

    def __init__(self, ctx: SessionContext[Any]) -> None:
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
