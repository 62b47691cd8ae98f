"""The official schematichq SDK's track()/identify() buffer flushing to entitled's /batch.

Usage: python python_track.py BASE_URL API_KEY
Tracks 5 reports for a company on the Free plan (5 a month) through the SDK's event buffer,
then expects check_flag("reports") to flip to False with usage 5.
"""
import sys
import time

from schematic.client import Schematic, SchematicConfig

base_url, api_key = sys.argv[1:3]
client = Schematic(
    api_key,
    SchematicConfig(base_url=base_url, event_capture_url=base_url, event_buffer_period=1, cache_providers=[]),
)
company = {"id": "sdk-track"}

client.identify(keys={"email": "ops@sdk-track.test"}, company={"keys": company, "name": "SDK Track"}, name="Ops")
before = client.check_flag_with_entitlement("reports", company=company)
assert not before.reason.startswith("Error occurred"), before.reason

for _ in range(4):
    client.track("report_generated", company=company, user={"email": "ops@sdk-track.test"})
client.track("report_generated", company=company, quantity=1)


def usage():
    r = client.check_flag_with_entitlement("reports", company=company)
    assert not r.reason.startswith("Error occurred"), r.reason
    return r


# The buffer flushes every second; wait for the server to count all five.
deadline = time.time() + 15
r = usage()
while r.feature_usage != 5 and time.time() < deadline:
    time.sleep(0.2)
    r = usage()
assert r.feature_usage == 5, r
assert r.value is False and r.rule_type == "plan_entitlement_usage_exceeded", r
assert client.check_flag("reports", company=company) is False

client.shutdown()
print("OK")
