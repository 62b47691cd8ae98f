"""The official schematichq SDK in datastream mode, driven over stdin by tests/datastream_sdk.rs.

Usage: datastream_sdk.py BASE_URL API_KEY

Reads one JSON command per line and answers one JSON line each:
  {"cmd": "ready"}                                  -> {"connected": bool} once flags arrived
  {"cmd": "matrix", "companies": [keys…], "flags": [key…]}
                                                    -> {"values": [[bool…]…]} (company-major)
  {"cmd": "wait", "company": keys, "flag": key, "value": bool, "timeout": s}
                                                    -> {"ok": bool, "ms": float}
  {"cmd": "latency", "company": keys, "flag": key, "n": N}
                                                    -> {"us": [float…]} per check_flag call
  {"cmd": "quit"}
Fallbacks to REST are visible to the test through the server's check counter.
"""

import asyncio
import json
import logging
import sys
import time

from schematic.client import AsyncSchematic, AsyncSchematicConfig

logging.basicConfig(level=logging.WARNING, stream=sys.stderr)


async def main() -> None:
    base_url, api_key = sys.argv[1], sys.argv[2]
    client = AsyncSchematic(
        api_key,
        AsyncSchematicConfig(
            base_url=base_url,
            event_capture_url=base_url,
            use_datastream=True,
            event_buffer_period=1,
        ),
    )
    await client.initialize()
    ds = client._datastream_client
    assert ds is not None, "datastream client not started (is schematichq[datastream] installed?)"
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)

    def answer(obj) -> None:
        sys.stdout.write(json.dumps(obj) + "\n")
        sys.stdout.flush()

    while True:
        line = await reader.readline()
        if not line:
            break
        cmd = json.loads(line)
        kind = cmd["cmd"]
        if kind == "quit":
            break
        if kind == "ready":
            deadline = time.monotonic() + cmd.get("timeout", 10)
            ok = False
            while time.monotonic() < deadline:
                if ds.is_connected() and await ds.get_flag(cmd.get("flag", "sso")) is not None:
                    ok = True
                    break
                await asyncio.sleep(0.01)
            answer({"connected": ok})
        elif kind == "matrix":
            values = []
            for company in cmd["companies"]:
                row = []
                for flag in cmd["flags"]:
                    row.append(await client.check_flag(flag, company=company))
                values.append(row)
            answer({"values": values})
        elif kind == "wait":
            start = time.monotonic()
            deadline = start + cmd.get("timeout", 1.0)
            ok = False
            while True:
                v = await client.check_flag(cmd["flag"], company=cmd["company"])
                if v == cmd["value"]:
                    ok = True
                    break
                if time.monotonic() >= deadline:
                    break
                await asyncio.sleep(0.002)
            answer({"ok": ok, "ms": (time.monotonic() - start) * 1000.0})
        elif kind == "latency":
            us = []
            for _ in range(cmd["n"]):
                t = time.perf_counter()
                await client.check_flag(cmd["flag"], company=cmd["company"])
                us.append((time.perf_counter() - t) * 1e6)
            answer({"us": us})
        else:
            answer({"error": f"unknown command {kind!r}"})
    await client.shutdown()


asyncio.run(main())
