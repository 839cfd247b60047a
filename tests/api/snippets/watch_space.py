# The reference's space-stream snippet (space-stream.txt, websockets.txt),
# as published; only the base URL and the ids differ, and they come from
# the command line.
import asyncio
import json
import sys

import websockets

BASE = sys.argv[1]


async def watch_space(space_id: str, api_key: str):
    uri = f"{BASE}/api/v1/realtime/spaces/{space_id}?token={api_key}"

    async with websockets.connect(uri) as ws:
        async for message in ws:
            event = json.loads(message)
            print(f"[{event['jobName']}] {event['type']} → {event['status']}", flush=True)

asyncio.run(watch_space(sys.argv[2], sys.argv[3]))
