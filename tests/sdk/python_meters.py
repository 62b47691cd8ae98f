"""Usage billed through Stripe meters, driven by the official schematichq SDK's track().

Usage: python python_meters.py BASE_URL API_KEY
Tracks 150 units (three events of 50) for each of the companies `overage-co`, `payg-co` and
`flat-co` (keys `company_id`) through the SDK's event buffer, and waits until the server has
counted them all. The Rust test then checks what reached the fake Stripe.
"""
import sys
import time

from schematic.client import Schematic, SchematicConfig

base_url, api_key = sys.argv[1:3]
client = Schematic(
    api_key,
    SchematicConfig(base_url=base_url, event_capture_url=base_url, event_buffer_period=1, cache_providers=[]),
)
companies = ["overage-co", "payg-co", "flat-co"]
for company in companies:
    for _ in range(3):
        client.track("api_call", company={"company_id": company}, quantity=50)


def usage(company):
    r = client.check_flag_with_entitlement("api-calls", company={"company_id": company})
    assert not r.reason.startswith("Error occurred"), r.reason
    return r.feature_usage


deadline = time.time() + 15
while time.time() < deadline and any(usage(c) != 150 for c in companies):
    time.sleep(0.2)
for c in companies:
    assert usage(c) == 150, (c, usage(c))
client.shutdown()
print("OK")
