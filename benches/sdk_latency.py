"""SDK check_flag latency, datastream mode vs HTTP, in one run (benches/datastream.sh).

Usage: sdk_latency.py BASE_URL API_KEY CHECKS
Two AsyncSchematic clients in one process, one with use_datastream=True, one without
(its flag-check cache disabled, so every call is a round trip to entitled); each calls
check_flag(FLAG, company={"id": "bench-co"}) CHECKS times after a warm-up, alternating
blocks of 100 so both see the same machine load. Prints p50/p99 in microseconds.
"""

import asyncio
import statistics
import sys
import time

from schematic.client import AsyncSchematic, AsyncSchematicConfig

FLAG = "api-calls"
COMPANY = {"id": "bench-co"}


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(len(xs) * p))]


async def main() -> None:
    base, key, checks = sys.argv[1], sys.argv[2], int(sys.argv[3])
    # Events (the datastream client's flag_check reports) go to entitled's /batch too.
    ds = AsyncSchematic(
        key, AsyncSchematicConfig(base_url=base, event_capture_url=base, use_datastream=True)
    )
    http = AsyncSchematic(
        key, AsyncSchematicConfig(base_url=base, event_capture_url=base, cache_providers=[])
    )
    await ds.initialize()
    await http.initialize()
    deadline = time.monotonic() + 10
    while not (ds._datastream_client.is_connected() and await ds._datastream_client.get_flag(FLAG)):
        assert time.monotonic() < deadline, "datastream did not connect"
        await asyncio.sleep(0.05)
    for client in (ds, http):
        for _ in range(200):
            assert await client.check_flag(FLAG, company=COMPANY) is True
    samples = {"datastream": [], "http": []}
    for _ in range(checks // 100):
        for name, client in (("datastream", ds), ("http", http)):
            for _ in range(100):
                t = time.perf_counter()
                await client.check_flag(FLAG, company=COMPANY)
                samples[name].append((time.perf_counter() - t) * 1e6)
    for name, xs in samples.items():
        print(f"{name}: {len(xs)} checks, p50 {pct(xs, 0.5):.0f} µs, p99 {pct(xs, 0.99):.0f} µs, mean {statistics.mean(xs):.0f} µs")
    # Where a datastream check's time goes: the engine call alone.
    engine = ds._datastream_client._rules_engine
    flag = await ds._datastream_client.get_flag(FLAG)
    company = await ds._datastream_client.get_cached_company(COMPANY)
    xs = []
    for _ in range(checks):
        t = time.perf_counter()
        engine.check_flag(flag, company, None)
        xs.append((time.perf_counter() - t) * 1e6)
    print(f"of which the WASM engine call (serialise, evaluate, parse): p50 {pct(xs, 0.5):.0f} µs, p99 {pct(xs, 0.99):.0f} µs")
    await ds.shutdown()
    await http.shutdown()


asyncio.run(main())
