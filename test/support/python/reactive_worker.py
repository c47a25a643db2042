"""A worker whose behaviour follows Elixir-side variables, without polling.

Usage: reactive_worker.py ADDRESS SESSION_ID

It watches `strategy` (a choice) and `model` (a module) over grpc.aio and
prints SWITCHED:<name>=<value> whenever one changes. Each line on stdin is a
comma-separated list of numbers; it answers RESULT:<strategy>@<model>:<output>
using whatever strategy and model are current. It exits when the session closes.
"""

import asyncio
import sys
from collections.abc import Callable

from snakepit_bridge import AsyncSessionContext, connect_async

STRATEGIES: dict[str, Callable[[list[int]], str]] = {
    "greedy": lambda xs: str(max(xs)),
    "beam": lambda xs: ",".join(str(x) for x in sorted(xs, reverse=True)[:2]),
    "sample": lambda xs: str(xs[len(xs) // 2]),
}


async def main(address: str, session_id: str) -> None:
    current: dict[str, str] = {}
    async with connect_async(address) as channel:
        ctx = AsyncSessionContext(session_id, channel)

        async def follow() -> None:
            async for update in ctx.watch_variables(["strategy", "model"], include_initial=True):
                if update["update_type"] == "session_closed":
                    return
                current[update["name"]] = update["value"]
                print(f"SWITCHED:{update['name']}={update['value']}", flush=True)

        async def serve_items() -> None:
            # stdin as an asyncio stream: no reader thread left blocked at exit.
            reader = asyncio.StreamReader()
            loop = asyncio.get_running_loop()
            await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
            while True:
                line = (await reader.readline()).decode()
                if not line:
                    return
                xs = [int(x) for x in line.strip().split(",")]
                strategy = current["strategy"]
                print(f"RESULT:{strategy}@{current['model']}:{STRATEGIES[strategy](xs)}", flush=True)

        watcher = asyncio.create_task(follow())
        worker = asyncio.create_task(serve_items())
        await asyncio.wait([watcher, worker], return_when=asyncio.FIRST_COMPLETED)
        print("DONE", flush=True)
        watcher.cancel()
        worker.cancel()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))
