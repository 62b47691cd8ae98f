"""Drives a live entitled server with the official schematichq Python SDK.

Usage: python python_sdk.py BASE_URL API_KEY PRO_PLAN_ID ANALYTICS_PLAN_ID AUDIT_LOG_FEATURE_ID
Exits non-zero with a message on the first wrong answer.
"""
import sys

from schematic import CheckFlagRequestBody
from schematic.client import Schematic, SchematicConfig

base_url, api_key, pro_id, analytics_id, audit_log_id = sys.argv[1:6]
# No cache: every check must reach the server.
client = Schematic(api_key, SchematicConfig(base_url=base_url, cache_providers=[]))
company = {"id": "sdk-co"}


def check(flag):
    """The full check response; the SDK hides errors behind defaults, so look for them."""
    resp = client.check_flag_with_entitlement(flag, company=company)
    assert not resp.reason.startswith("Error occurred"), f"{flag}: {resp.reason}"
    return resp


# Upsert and look up companies.
up = client.companies.upsert_company(
    keys=company, name="SDK Co", base_plan_id=pro_id, traits={"projects_count": 2}
)
company_id = up.data.id
assert company_id.startswith("comp_"), company_id
assert up.data.name == "SDK Co"
assert up.data.plan is not None and up.data.plan.id == pro_id, up.data.plan
looked = client.companies.lookup_company(keys=company)
assert looked.data.id == company_id
got = client.companies.get_company(company_id)
assert got.data.keys[0].key == "id" and got.data.keys[0].value == "sdk-co"
listed = client.companies.list_companies(limit=10)
assert [c.id for c in listed.data] == [company_id]
trait = client.companies.upsert_company_trait(keys=company, trait="projects_count", incr=1)
assert trait.data.traits["projects_count"] == 3, trait.data.traits

# Plan entitlements.
r = check("custom-branding")
assert r.value is True and r.rule_type == "plan_entitlement", r
assert client.check_flag("custom-branding", company=company) is True
assert client.check_flag("sso", company=company) is False
r = check("projects")
assert r.value is True and r.feature_usage == 3 and r.feature_allocation == 10, r
r = check("api-calls")
assert r.entitlement is not None and r.entitlement.feature_key == "api-calls", r
assert r.entitlement.metric_period == "current_month"

# An add-on.
assert check("reports").entitlement.allocation == 100
client.companies.upsert_company(
    keys=company, request_options={"additional_body_parameters": {"add_on_ids": [analytics_id]}}
)
r = check("reports")
assert r.value is True and r.entitlement.value_type == "unlimited", r

# A negative override beats the plan.
assert check("audit-log").value is True
ov = client.entitlements.create_company_override(
    company_id=company_id, feature_id=audit_log_id, value_type="boolean", value_bool=False, note="SDK test"
)
assert ov.data.company_id == company_id
r = check("audit-log")
assert r.value is False and r.rule_type == "company_override", r
overrides = client.entitlements.list_company_overrides(company_id=company_id)
assert [o.id for o in overrides.data] == [ov.data.id]

# All flags at once.
flags = client.features.check_flags(company=company)
by_key = {f.flag: f.value for f in flags.data.flags}
assert by_key["custom-branding"] is True and by_key["audit-log"] is False, by_key

# Every flag for several contexts at once, in the order sent.
bulk = client.features.check_flags_bulk(
    contexts=[
        CheckFlagRequestBody(company=company),
        CheckFlagRequestBody(company={"id": "nobody"}),
        CheckFlagRequestBody(),
    ]
)
assert len(bulk.data.data) == 3, bulk.data
known, unknown, empty = bulk.data.data
assert [f.flag for f in known.flags] == [f.flag for f in flags.data.flags]
assert {f.flag: f.value for f in known.flags} == by_key, known
assert all(f.company_id == company_id for f in known.flags), known.flags[0]
projects = next(f for f in known.flags if f.flag == "projects")
assert projects.feature_usage == 3 and projects.entitlement.allocation == 10, projects
for answers in (unknown, empty):
    assert len(answers.flags) == len(known.flags)
    assert all(f.company_id is None and f.rule_type == "default" for f in answers.flags), answers
    assert answers.credit_spend_policies == []

# Unknown companies get defaults, never errors.
other = client.check_flag_with_entitlement("custom-branding", company={"id": "nobody"})
assert other.value is False and other.rule_type == "default", other

client.shutdown()
print("OK")
