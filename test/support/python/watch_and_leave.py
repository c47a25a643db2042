"""Opens a watch, then leaves in the way the test asks.

Usage: watch_and_leave.py ADDRESS SESSION_ID MODE
MODE: cancel — cancel the consuming task; close — close the channel;
kill — do nothing and wait to be killed. Prints READY once the first update
(the initial value) arrived, then waits for a line on stdin (so the test can
see the watch counted before it goes), leaves, prints LEFT and waits on stdin.
"""

import asyncio
import sys

from snakepit_bridge import AsyncSessionContext, connect_async


async def main(address: str, session_id: str, mode: str) -> None:
    channel = connect_async(address)
    ctx = AsyncSessionContext(session_id, channel)
    ready = asyncio.Event()

    async def consume() -> None:
        async for _ in ctx.watch_variables(["x"], include_initial=True):
            ready.set()

    task = asyncio.create_task(consume())
    await ready.wait()
    print("READY", flush=True)
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, sys.stdin.readline)
    if mode == "cancel":
        task.cancel()
    elif mode == "close":
        await channel.close()
    if mode != "kill":
        print("LEFT", flush=True)
    await loop.run_in_executor(None, sys.stdin.readline)


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:4]))
