"""Python half of the minimal pair: prints each new temperature as it is set.

Usage: SNAKEPIT_BRIDGE_ADDRESS=... SNAKEPIT_BRIDGE_TOKEN=... python examples/minimal/watch.py SESSION_ID
(update.exs prints the line to run, with a token that grants that session only.)
"""

import asyncio
import sys

from snakepit_bridge import AsyncSessionContext, connect_async


async def main(session_id: str) -> None:
    async with connect_async() as channel:
        ctx = AsyncSessionContext(session_id, channel)
        async for update in ctx.watch_variables(["temperature"]):
            print(f"temperature is now {update['value']} (version {update['version']})")


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
