"""Verifies recorded webhook deliveries with the official libraries.

Usage: python verify_webhooks.py DELIVERIES_JSON
The file holds a list of {"headers": [[name, value], ...], "body_b64", "schematic_secrets",
"standard_secrets"}. Each delivery is checked with schematichq's
`schematic.webhook_utils.verify_webhook_signature` under each of its Schematic secrets and
with standardwebhooks' `Webhook(secret).verify` under each of its Standard Webhooks secrets.
Prints one JSON line: per delivery, {"webhook_id", "schematic": [bool...], "standard":
[bool...], "errors": [str...]}.
"""
import base64
import json
import sys

from schematic.webhook_utils import WebhookSignatureError, verify_webhook_signature
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError


class Headers(dict):
    """Case-insensitive, as web frameworks' header mappings are."""

    def get(self, name, default=None):
        return super().get(name.lower(), default)


class Request:
    """What `verify_webhook_signature` reads from a framework's request object."""

    def __init__(self, headers, body):
        self.headers = Headers({k.lower(): v for k, v in headers})
        self.body = body


with open(sys.argv[1]) as f:
    deliveries = json.load(f)

results = []
for d in deliveries:
    body = base64.b64decode(d["body_b64"])
    request = Request(d["headers"], body)
    errors = []
    schematic = []
    for secret in d["schematic_secrets"]:
        try:
            verify_webhook_signature(request, secret, body=body)
            schematic.append(True)
        except WebhookSignatureError as e:
            schematic.append(False)
            errors.append(f"schematic: {e}")
    standard = []
    for secret in d["standard_secrets"]:
        try:
            Webhook(secret).verify(body, dict(request.headers))
            standard.append(True)
        except WebhookVerificationError as e:
            standard.append(False)
            errors.append(f"standardwebhooks: {e}")
    results.append(
        {
            "webhook_id": request.headers.get("webhook-id"),
            "schematic": schematic,
            "standard": standard,
            "errors": errors,
        }
    )
print(json.dumps(results))
