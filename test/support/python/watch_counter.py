"""Watches `counter` over grpc.aio and prints UPDATE:<value> per change.

Usage: watch_counter.py ADDRESS SESSION_ID COUNT — exits after COUNT changes.
"""

import asyncio
import sys

from snakepit_bridge import AsyncSessionContext, connect_async


async def main(address: str, session_id: str, count: int) -> None:
    async with connect_async(address) as channel:
        ctx = AsyncSessionContext(session_id, channel)
        seen = 0
        async for update in ctx.watch_variables(["counter"], include_initial=False):
            print(f"UPDATE:{update['value']}", flush=True)
            seen += 1
            if seen == count:
                return


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
