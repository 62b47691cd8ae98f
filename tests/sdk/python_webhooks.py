"""Manages outbound webhooks of a live entitled server with the official schematichq SDK.

Usage:
  python python_webhooks.py BASE_URL API_KEY create RECEIVER_URL
      creates an endpoint for plan changes and overrides, then adds company.created to it
      (update), reads it back (get, list, count) and sends it a test message (the receiver
      must answer 2xx); prints {"id", "secret"} as JSON.
  python python_webhooks.py BASE_URL API_KEY events WEBHOOK_ID
      lists the endpoint's messages (list, count, get); prints them as JSON.
Exits non-zero with a message on the first wrong answer.
"""
import json
import sys

from schematic.client import Schematic, SchematicConfig

base_url, api_key, command, arg = sys.argv[1:5]
client = Schematic(api_key, SchematicConfig(base_url=base_url, cache_providers=[]))

if command == "create":
    types = ["company.plan_changed", "company.override.created", "company.override.expired"]
    created = client.webhooks.create_webhook(name="Plan watcher", url=arg, request_types=types).data
    assert created.id.startswith("whk_"), created.id
    assert created.secret.startswith("whsec_"), created.secret
    assert created.status == "active" and created.url == arg, created
    assert list(created.request_types) == types, created.request_types

    updated = client.webhooks.update_webhook(
        created.id, request_types=types + ["company.created"]
    ).data
    assert list(updated.request_types) == types + ["company.created"], updated.request_types
    assert updated.name == "Plan watcher" and updated.secret == created.secret, updated

    got = client.webhooks.get_webhook(created.id).data
    assert got.id == created.id and list(got.request_types) == list(updated.request_types), got
    listed = client.webhooks.list_webhooks().data
    assert [w.id for w in listed] == [created.id], listed
    assert client.webhooks.count_webhooks().data.count == 1
    assert [w.id for w in client.webhooks.list_webhooks(q="watch").data] == [created.id]
    assert client.webhooks.list_webhooks(q="no such hook").data == []
    assert client.webhooks.count_webhooks(q="no such hook").data.count == 0

    # A test delivery; the SDK gets how its first attempt went.
    tested = client.webhooks.send_test_webhook_action(
        created.id, request_type="company.plan_changed"
    ).data
    assert tested.success is True and tested.response_code == 200, tested
    assert tested.failure_reason is None, tested
    out = {"id": created.id, "secret": created.secret}

elif command == "events":
    events = client.webhooks.list_webhook_events(webhook_id=arg).data
    count = client.webhooks.count_webhook_events(webhook_id=arg).data.count
    assert count == len(events), (count, len(events))
    for e in events:
        assert e.webhook_id == arg, e
        detail = client.webhooks.get_webhook_event(e.id).data
        assert detail.id == e.id and detail.webhook is not None and detail.webhook.id == arg, detail
        assert detail.payload == e.payload, detail
    out = [
        {
            "id": e.id,
            "request_type": e.request_type,
            "status": e.status,
            "attempt_count": e.attempt_count,
            "response_code": e.response_code,
            "sent": e.sent_at is not None,
            "payload": e.payload,
        }
        for e in events
    ]
else:
    sys.exit(f"unknown command {command}")
client.shutdown()
print(json.dumps(out))
