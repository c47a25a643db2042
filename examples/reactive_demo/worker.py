"""A Python worker of the reactive demo.

Usage: worker.py WORKER_ID

The bridge's address, the session and a token that grants that session only
come from the environment the demo hands it (`Snakepit.Bridge.Server.worker_env/1`):
SNAKEPIT_BRIDGE_ADDRESS, SNAKEPIT_BRIDGE_SESSION, SNAKEPIT_BRIDGE_TOKEN.

It watches `temperature`, `strategy` and `model` over grpc.aio — no polling —
and keeps "generating" in a loop with whatever is current: the strategy
decides which function it calls, the model which one it has "loaded", the
temperature how it samples. After each step it writes a score to `feedback`.

It talks to the demo on stdout, one event a line, as space-separated
key=value pairs (values never contain spaces):
  ready worker=W temperature=V:VALUE ...      the watch is live (initial values in)
  react worker=W name=N old=X value=Y version=V latency_us=L   a change took effect
  report worker=W temperature=V:VALUE ...     answer to REPORT on stdin
"""

from __future__ import annotations

import asyncio
import math
import os
import random
import sys
import time
from collections.abc import Callable
from typing import Any

from snakepit_bridge import AsyncSessionContext, connect_async


def greedy(scores: list[float], temperature: float) -> int:
    return max(range(len(scores)), key=scores.__getitem__)


def beam(scores: list[float], temperature: float) -> int:
    top = sorted(range(len(scores)), key=scores.__getitem__, reverse=True)[:3]
    return top[0] if temperature < 1.0 else top[-1]


def sample(scores: list[float], temperature: float) -> int:
    t = max(temperature, 0.05)
    weights = [math.exp(s / t) for s in scores]
    return random.choices(range(len(scores)), weights=weights)[0]


STRATEGIES: dict[str, Callable[[list[float], float], int]] = {"greedy": greedy, "beam": beam, "sample": sample}
# "Loading" a model sets how good its raw scores are.
MODEL_QUALITY = {"tiny-lm": 0.55, "base-lm": 0.7, "large-lm": 0.85}


def emit(event: str, **fields: Any) -> None:
    print(" ".join([event] + [f"{k}={v}" for k, v in fields.items()]), flush=True)


async def main(session_id: str, worker_id: str) -> None:
    current: dict[str, Any] = {}
    versions: dict[str, int] = {}
    live = asyncio.Event()
    async with connect_async() as channel:
        ctx = AsyncSessionContext(session_id, channel)

        def seen() -> dict[str, str]:
            return {n: f"{versions[n]}:{current[n]}" for n in sorted(current)}

        async def follow() -> None:
            watched = ["temperature", "strategy", "model"]
            async for update in ctx.watch_variables(watched, include_initial=True):
                if update.update_type == "session_closed":
                    return
                name = update.name
                old = current.get(name)
                current[name], versions[name] = update.value, update.version
                if update.update_type == "value_change":
                    # The writer stamps the change just before writing it.
                    sent = update.metadata.get("sent_at_ns")
                    latency = f"{(time.time_ns() - int(sent)) / 1000:.0f}" if sent else "none"
                    emit(
                        "react",
                        worker=worker_id,
                        name=name,
                        old=old,
                        value=update.value,
                        version=update.version,
                        latency_us=latency,
                    )
                if not live.is_set() and len(current) == len(watched):
                    live.set()
                    emit("ready", worker=worker_id, **seen())

        async def work() -> None:
            await live.wait()
            step = 0
            while True:
                step += 1
                quality = MODEL_QUALITY.get(current["model"], 0.5)
                temperature = current["temperature"]
                scores = [random.random() * quality for _ in range(8)]
                choice = STRATEGIES[current["strategy"]](scores, temperature)
                # Output is best near temperature 0.9: something for the optimizer to find.
                score = scores[choice] * (1 - 0.4 * abs(temperature - 0.9)) + random.uniform(-0.03, 0.03)
                await ctx.update_variable(
                    "feedback",
                    round(score, 4),
                    metadata={"worker": worker_id, "step": str(step), "strategy": current["strategy"]},
                )
                await asyncio.sleep(0.1)

        async def answer() -> None:
            reader = asyncio.StreamReader()
            loop = asyncio.get_running_loop()
            await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
            while line := (await reader.readline()).decode():
                if line.strip() == "REPORT":
                    emit("report", worker=worker_id, **seen())

        tasks = [asyncio.create_task(t()) for t in (follow, work, answer)]
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for t in tasks:
            t.cancel()


if __name__ == "__main__":
    asyncio.run(main(os.environ["SNAKEPIT_BRIDGE_SESSION"], sys.argv[1]))
