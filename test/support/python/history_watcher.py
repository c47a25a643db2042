"""Records what a watch delivers, for the history test.

Usage: history_watcher.py ADDRESS SESSION_ID SLOW_MS VAR...
Prints READY once every variable's initial value is in, then
`U <name> <version> <value>` per update. When a line `FINAL name=version ...`
arrives on stdin, it keeps reading until it has seen those versions, prints
END and exits. SLOW_MS > 0 makes it a deliberately slow reader.
"""

import asyncio
import sys

from snakepit_bridge import AsyncSessionContext, connect_async


async def main(address: str, session_id: str, slow_ms: int, names: list[str]) -> None:
    seen: dict[str, int] = {}
    progress = asyncio.Event()
    ready = asyncio.Event()
    out: list[str] = []

    async with connect_async(address) as channel:
        watch = AsyncSessionContext(session_id, channel).watch_variables(names, include_initial=True)

        async def consume() -> None:
            async for u in watch:
                seen[u["name"]] = u["version"]
                out.append(f"U {u['name']} {u['version']} {u['value']}")
                progress.set()
                if len(seen) == len(names):
                    ready.set()
                if slow_ms:
                    await asyncio.sleep(slow_ms / 1000)

        consumer = asyncio.create_task(consume())
        await ready.wait()
        print("READY", flush=True)

        reader = asyncio.StreamReader()
        loop = asyncio.get_running_loop()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
        line = (await reader.readline()).decode().split()
        final = {k: int(v) for k, v in (p.split("=") for p in line[1:])}
        while not all(seen.get(n, 0) >= v for n, v in final.items()):
            progress.clear()
            await asyncio.wait_for(progress.wait(), timeout=30)
        consumer.cancel()
        await watch.aclose()
    print("\n".join(out + ["END"]), flush=True)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4:]))
