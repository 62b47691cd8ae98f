"""Drives entitled's MCP endpoint (POST /mcp) with the official `mcp` Python SDK, as an AI
client would: lists the tools and calls each one, over both protocol generations.

Usage: python mcp_client.py BASE_URL API_KEY READONLY_KEY PRO_PLAN_ID
Prints OK at the end; exits non-zero with a message on the first wrong answer.
"""
import asyncio
import sys

import httpx2
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client

base_url, api_key, readonly_key, pro_id = sys.argv[1:5]
URL = base_url + "/mcp"
READ_ONLY = {
    "list-companies",
    "list-users",
    "get-insights-summary",
    "get-top-features",
    "get-plan-growth",
    "check-flag",
}
WRITES = {"upsert-company", "upsert-user", "track-usage-event"}


def connect(headers, mode):
    http = create_mcp_http_client(headers=headers)
    return Client(streamable_http_client(URL, http_client=http), mode=mode, cache=None)


async def call(client, name, args):
    """The tool's structured `{data, params}`; fails on a tool error."""
    result = await client.call_tool(name, args)
    text = " ".join(getattr(c, "text", "") for c in result.content)
    assert not result.is_error, f"{name} {args}: {text}"
    assert result.structured_content is not None, f"{name}: no structured content"
    return result.structured_content


async def error_of(client, name, args):
    result = await client.call_tool(name, args)
    assert result.is_error, f"{name} {args} should fail: {result.structured_content}"
    return " ".join(getattr(c, "text", "") for c in result.content)


async def tools_are_described(client):
    tools = (await client.list_tools()).tools
    names = {t.name for t in tools}
    assert names == READ_ONLY | WRITES, names
    for t in tools:
        assert t.description, f"{t.name} has no description"
        assert t.input_schema.get("type") == "object", (t.name, t.input_schema)
        hint = t.annotations.read_only_hint if t.annotations else None
        assert hint is (t.name in READ_ONLY), (t.name, t.annotations)
    check = next(t for t in tools if t.name == "check-flag")
    assert "flag" in check.input_schema.get("required", []), check.input_schema
    props = next(t for t in tools if t.name == "track-usage-event").input_schema["properties"]
    assert {"event", "company", "user", "quantity"} <= set(props), props


async def full_session(mode, headers, suffix, n):
    """The n-th session (from 1) on a fresh database: each adds one company and one event."""
    async with connect(headers, mode) as client:
        await tools_are_described(client)

        company = {"id": f"mcp-co-{suffix}"}
        up = await call(client, "upsert-company", {
            "keys": company, "name": "MCP Co", "traits": {"seats": 3}, "base_plan_id": pro_id,
        })
        assert up["data"]["id"].startswith("comp_"), up
        assert up["data"]["plan"]["id"] == pro_id, up["data"]["plan"]

        listed = await call(client, "list-companies", {"limit": 50})
        assert company["id"] in [k["value"] for c in listed["data"] for k in c["keys"]], listed
        assert listed["params"] == {"limit": 50, "offset": 0}, listed["params"]

        user = await call(client, "upsert-user", {
            "keys": {"email": f"ada-{suffix}@example.com"}, "name": "Ada", "company": company,
        })
        assert user["data"]["company_memberships"][0]["company_id"] == up["data"]["id"], user
        users = await call(client, "list-users", {"company_id": up["data"]["id"]})
        assert [u["id"] for u in users["data"]] == [user["data"]["id"]], users

        check = await call(client, "check-flag", {"flag": "custom-branding", "company": company})
        assert check["data"]["value"] is True, check
        assert check["data"]["rule_type"] == "plan_entitlement", check

        before = await call(client, "check-flag", {"flag": "api-calls", "company": company})
        tracked = await call(client, "track-usage-event", {
            "event": "api_call", "company": company, "quantity": 7,
        })
        assert tracked["data"]["event_id"].startswith("evnt_"), tracked
        after = await call(client, "check-flag", {"flag": "api-calls", "company": company})
        assert after["data"]["feature_usage"] == (before["data"]["feature_usage"] or 0) + 7, after

        summary = await call(client, "get-insights-summary", {})
        assert summary["data"]["total_companies"] == n, summary
        assert summary["data"]["events_last_30_days"]["track"] == n, summary
        top = await call(client, "get-top-features", {"limit": 3})
        assert top["data"]["features"][0]["feature_key"] == "api-calls", top
        assert top["data"]["features"][0]["usage"] == 7 * n, top
        growth = await call(client, "get-plan-growth", {})
        joined = sum(p["joined"] for p in growth["data"]["points"] if p["plan_id"] == pro_id)
        assert joined == n, growth

        # Bad input is a tool error naming the argument, not a crash.
        msg = await error_of(client, "get-plan-growth", {"start_time": "yesterday"})
        assert "start_time" in msg and "400" in msg, msg
        msg = await error_of(client, "check-flag", {"flag": "no-such-flag"})
        assert "404" in msg, msg


async def readonly_key_reads_only():
    async with connect({"X-Schematic-Api-Key": readonly_key}, "auto") as client:
        await call(client, "list-companies", {})
        await call(client, "check-flag", {"flag": "custom-branding", "company": {"id": "nobody"}})
        for name, args in [
            ("upsert-company", {"keys": {"id": "ro-co"}}),
            ("upsert-user", {"keys": {"id": "ro-user"}}),
            ("track-usage-event", {"event": "api_call", "company": {"id": "ro-co"}}),
        ]:
            msg = await error_of(client, name, args)
            assert "readonly" in msg and "403" in msg, msg


async def unknown_key_is_refused():
    async with httpx2.AsyncClient() as http:
        r = await http.post(URL, json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
                            headers={"Authorization": "Bearer sch_nope",
                                     "Accept": "application/json, text/event-stream"})
        assert r.status_code == 401, (r.status_code, r.text)


async def main():
    await full_session("auto", {"Authorization": f"Bearer {api_key}"}, "modern", 1)
    await full_session("legacy", {"X-Schematic-Api-Key": api_key}, "legacy", 2)
    await readonly_key_reads_only()
    await unknown_key_is_refused()
    print("OK")


asyncio.run(main())
