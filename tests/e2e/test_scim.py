"""SCIM 2.0 provisioning (/scim/v2) against the real binary, driven the way Okta and
Entra ID drive it: a service account's token with the `scim` scope creates people and
groups, group membership grants access to a virtual server, and deactivation or
deletion cuts a person off at once (their personal token is refused on the next
request)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import httpx
import pytest
from auth_util import TINY, auth_config, create_token, create_user, mcp_init
from gateway import Gateway, running_gateway

SCIM = "/scim/v2"
USER = "urn:ietf:params:scim:schemas:core:2.0:User"
GROUP = "urn:ietf:params:scim:schemas:core:2.0:Group"
PATCH = "urn:ietf:params:scim:api:messages:2.0:PatchOp"
ERROR = "urn:ietf:params:scim:api:messages:2.0:Error"
LIST = "urn:ietf:params:scim:api:messages:2.0:ListResponse"
TEAM = "scim-analysts"


def config() -> dict:
    up = {"upstream": "tiny", "prefix": ""}
    return auth_config([
        {"name": "alpha", "upstreams": [up]},
        {"name": "restricted", "upstreams": [up], "access": {"groups": [TEAM]}},
    ])


class Client:
    def __init__(self, gw: Gateway, token: str | None, prefix: str = SCIM):
        self.gw, self.token, self.prefix = gw, token, prefix

    def __call__(self, method: str, path: str, body: dict | None = None, *,
                 content_type: str = "application/scim+json", **kw) -> httpx.Response:
        headers = {"Accept": "application/scim+json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        content = None
        if body is not None:
            content = json.dumps(body)
            headers["Content-Type"] = content_type
        return httpx.request(method, f"{self.gw.base}{self.prefix}{path}", content=content, headers=headers,
                             timeout=30, **kw)


@pytest.fixture(scope="module")
def gw() -> Iterator[Gateway]:
    assert TINY.exists()
    with running_gateway(config()) as g:
        create_user(g, "root")
        yield g


@pytest.fixture(scope="module")
def admin(gw: Gateway) -> Client:
    return Client(gw, create_token(gw, "root", "admin", name="root-admin"), prefix="/api/v1")


@pytest.fixture(scope="module")
def scim(gw: Gateway) -> Client:
    """A service account's scim-scoped token, made with the CLI while the gateway runs."""
    gw.cli("service-account", "create", "okta-provisioning", "--owner", "root")
    out = gw.cli("token", "create", "--user", "okta-provisioning", "--name", "okta", "--scope", "scim")
    token = out.strip().splitlines()[-1]
    assert token.startswith("pcs_"), out
    client = Client(gw, token)
    deadline = time.monotonic() + 10
    while client("GET", "/ServiceProviderConfig").status_code == 401:
        assert time.monotonic() < deadline, "the gateway never learned of the SCIM token"
        time.sleep(0.05)
    return client


def personal_token(admin: Client, user_id: str, vs: str) -> str:
    r = admin("POST", "/tokens", {"user_id": user_id, "name": "laptop", "scopes": [f"vs:{vs}"]},
              content_type="application/json")
    assert r.status_code == 201, r.text
    return r.json()["token"]


def provision(scim: Client, user_name: str, external_id: str, **extra) -> dict:
    body = {"schemas": [USER], "userName": user_name, "externalId": external_id,
            "name": {"givenName": user_name.split("@")[0].title(), "familyName": "Example"},
            "emails": [{"value": user_name, "type": "work", "primary": True}], "active": True, **extra}
    r = scim("POST", "/Users", body)
    assert r.status_code == 201, r.text
    assert r.headers["content-type"].startswith("application/scim+json")
    assert r.headers["location"] == r.json()["meta"]["location"]
    return r.json()


def is_scim_error(r: httpx.Response, status: int, scim_type: str | None = None) -> bool:
    body = r.json()
    return (r.status_code == status and body["schemas"] == [ERROR] and body["status"] == str(status)
            and body.get("scimType") == scim_type)


def test_scim_needs_a_token_with_the_scim_scope(gw: Gateway, admin: Client) -> None:
    r = Client(gw, None)("GET", "/Users")
    assert is_scim_error(r, 401), r.text
    assert r.headers["www-authenticate"].startswith("Bearer")
    assert r.headers["content-type"].startswith("application/scim+json")
    assert is_scim_error(Client(gw, "pcs_forged-token")("GET", "/Users"), 401)
    # The administrator's token has the admin scope, not scim.
    r = Client(gw, admin.token)("GET", "/Users")
    assert is_scim_error(r, 403), r.text
    r = Client(gw, admin.token)("POST", "/Users", {"schemas": [USER], "userName": "intruder"})
    assert r.status_code == 403
    users = admin("GET", "/users").json()["users"]
    assert all(u["username"] != "intruder" for u in users)


def test_provision_group_access_then_deactivate(gw: Gateway, scim: Client, admin: Client) -> None:
    alice = provision(scim, "alice@example.com", "00u-alice")
    assert alice["active"] is True and alice["displayName"] == "Alice Example"
    # Okta looks people up by userName before creating them (case-insensitive).
    found = scim("GET", "/Users", params={"filter": 'userName eq "ALICE@example.com"'}).json()
    assert found["schemas"] == [LIST] and found["totalResults"] == 1
    assert found["Resources"][0]["id"] == alice["id"]
    by_ext = scim("GET", "/Users", params={"filter": 'externalId eq "00u-alice"'}).json()
    assert [u["id"] for u in by_ext["Resources"]] == [alice["id"]]

    pat = personal_token(admin, alice["id"], "restricted")
    assert mcp_init(gw, "restricted", pat).status_code == 403, "not yet in the group that grants access"

    group = scim("POST", "/Groups", {"schemas": [GROUP], "displayName": TEAM, "members": [{"value": alice["id"]}]})
    assert group.status_code == 201, group.text
    gid = group.json()["id"]
    assert [m["value"] for m in group.json()["members"]] == [alice["id"]]
    assert mcp_init(gw, "restricted", pat).status_code == 200
    shown = scim("GET", f"/Users/{alice['id']}").json()
    assert [g["display"] for g in shown["groups"]] == [TEAM]

    # Entra removes a member with a value-filter path; access ends at once.
    r = scim("PATCH", f"/Groups/{gid}", {"schemas": [PATCH], "Operations": [
        {"op": "Remove", "path": f'members[value eq "{alice["id"]}"]'}]})
    assert r.status_code == 200, r.text
    assert r.json()["members"] == []
    assert mcp_init(gw, "restricted", pat).status_code == 403
    # Okta adds members back with a value list.
    r = scim("PATCH", f"/Groups/{gid}", {"schemas": [PATCH], "Operations": [
        {"op": "add", "path": "members", "value": [{"value": alice["id"]}]}]})
    assert r.status_code == 200 and len(r.json()["members"]) == 1
    assert mcp_init(gw, "restricted", pat).status_code == 200

    # Okta's deactivation form.
    r = scim("PATCH", f"/Users/{alice['id']}", {"schemas": [PATCH], "Operations": [
        {"op": "replace", "value": {"active": False}}]})
    assert r.status_code == 200, r.text
    assert r.json()["active"] is False
    assert mcp_init(gw, "restricted", pat).status_code == 401
    tokens = admin("GET", f"/tokens?user_id={alice['id']}").json()["tokens"]
    assert [t["status"] for t in tokens] == ["revoked"]


def test_entra_deactivation_form_and_delete(gw: Gateway, scim: Client, admin: Client) -> None:
    bob = provision(scim, "bob@example.com", "entra-bob")
    pat = personal_token(admin, bob["id"], "alpha")
    assert mcp_init(gw, "alpha", pat).status_code == 200
    r = scim("PATCH", f"/Users/{bob['id']}", {"schemas": [PATCH], "Operations": [
        {"op": "Replace", "path": "active", "value": "False"}]})
    assert r.status_code == 200 and r.json()["active"] is False
    assert mcp_init(gw, "alpha", pat).status_code == 401

    carl = provision(scim, "carl@example.com", "entra-carl")
    pat = personal_token(admin, carl["id"], "alpha")
    assert mcp_init(gw, "alpha", pat).status_code == 200
    assert scim("DELETE", f"/Users/{carl['id']}").status_code == 204
    assert mcp_init(gw, "alpha", pat).status_code == 401
    assert admin("GET", f"/tokens?user_id={carl['id']}").json()["tokens"] == []
    assert is_scim_error(scim("GET", f"/Users/{carl['id']}"), 404)
    assert is_scim_error(scim("DELETE", f"/Users/{carl['id']}"), 404)


def test_updates_paging_and_errors(scim: Client) -> None:
    dora = provision(scim, "dora@example.com", "00u-dora")
    r = scim("PATCH", f"/Users/{dora['id']}", {"schemas": [PATCH], "Operations": [
        {"op": "replace", "path": "userName", "value": "dora.m@example.com"},
        {"op": "replace", "path": "name.formatted", "value": "Dora Marquez"},
        {"op": "Add", "path": 'emails[type eq "work"].value', "value": "dora.m@example.com"},
        {"op": "Add", "path": "title", "value": "Analyst"}]})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["userName"] == "dora.m@example.com" and body["displayName"] == "Dora Marquez"
    assert body["emails"][0]["value"] == "dora.m@example.com"
    put = scim("PUT", f"/Users/{dora['id']}", {"schemas": [USER], "userName": "dora.m@example.com",
                                               "displayName": "Dora M", "active": True})
    assert put.status_code == 200 and put.json()["displayName"] == "Dora M" and "emails" not in put.json()
    assert put.json()["externalId"] == "00u-dora", "PUT without externalId keeps the IdP's link"

    dup = scim("POST", "/Users", {"schemas": [USER], "userName": "DORA.M@example.com"})
    assert is_scim_error(dup, 409, "uniqueness"), dup.text
    assert is_scim_error(scim("GET", "/Users", params={"filter": "userName eq"}), 400, "invalidFilter")
    assert is_scim_error(scim("GET", "/Users", params={"filter": 'userName xx "a"'}), 400, "invalidFilter")
    assert is_scim_error(scim("POST", "/Users", {"schemas": [USER], "displayName": "no userName"}), 400, "invalidValue")
    bad_op = scim("PATCH", f"/Users/{dora['id']}", {"schemas": [PATCH], "Operations": [{"op": "move", "path": "active"}]})
    assert is_scim_error(bad_op, 400, "invalidSyntax")
    read_only = scim("PATCH", f"/Users/{dora['id']}", {"schemas": [PATCH], "Operations": [
        {"op": "replace", "path": "id", "value": "x"}]})
    assert is_scim_error(read_only, 400, "mutability")
    assert scim("POST", "/Users", {"userName": "x"}, content_type="text/plain").status_code == 415
    as_json = scim("POST", "/Users", {"schemas": [USER], "userName": "plainjson@example.com"},
                   content_type="application/json")
    assert as_json.status_code == 201, "application/json is accepted too"

    page = scim("GET", "/Users", params={"startIndex": "2", "count": "1"}).json()
    assert page["startIndex"] == 2 and page["itemsPerPage"] == 1 and page["totalResults"] >= 3
    everyone = scim("GET", "/Users").json()
    assert page["Resources"][0]["id"] == everyone["Resources"][1]["id"]
    names = [u["userName"] for u in everyone["Resources"]]
    assert "okta-provisioning" not in names, "service accounts are not SCIM resources"
    assert is_scim_error(scim("GET", "/Users", params={"count": "many"}), 400, "invalidValue")


def test_groups_filter_rename_and_delete(scim: Client) -> None:
    eve = provision(scim, "eve@example.com", "00u-eve")
    g = scim("POST", "/Groups", {"schemas": [GROUP], "displayName": "finance", "externalId": "grp-fin"})
    assert g.status_code == 201
    gid = g.json()["id"]
    assert is_scim_error(scim("POST", "/Groups", {"schemas": [GROUP], "displayName": "finance"}), 409, "uniqueness")
    bad_member = scim("POST", "/Groups", {"schemas": [GROUP], "displayName": "x", "members": [{"value": "nobody"}]})
    assert is_scim_error(bad_member, 400, "invalidValue")
    found = scim("GET", "/Groups", params={"filter": 'displayName eq "finance"', "excludedAttributes": "members"}).json()
    assert found["totalResults"] == 1 and "members" not in found["Resources"][0]
    r = scim("PATCH", f"/Groups/{gid}", {"schemas": [PATCH], "Operations": [
        {"op": "replace", "value": {"id": gid, "displayName": "finance-emea"}},
        {"op": "add", "path": "members", "value": [{"value": eve["id"]}]}]})
    assert r.status_code == 200 and r.json()["displayName"] == "finance-emea"
    put = scim("PUT", f"/Groups/{gid}", {"schemas": [GROUP], "displayName": "finance-emea", "members": []})
    assert put.status_code == 200 and put.json()["members"] == []
    assert scim("DELETE", f"/Groups/{gid}").status_code == 204
    assert is_scim_error(scim("GET", f"/Groups/{gid}"), 404)


def test_discovery_endpoints(scim: Client) -> None:
    spc = scim("GET", "/ServiceProviderConfig")
    assert spc.status_code == 200 and spc.json()["patch"]["supported"] is True
    assert spc.json()["filter"]["supported"] is True and spc.json()["bulk"]["supported"] is False
    rts = scim("GET", "/ResourceTypes").json()
    assert {r["name"]: r["endpoint"] for r in rts["Resources"]} == {"User": "/Users", "Group": "/Groups"}
    assert scim("GET", "/ResourceTypes/User").json()["schema"] == USER
    schemas = scim("GET", "/Schemas").json()
    assert {s["id"] for s in schemas["Resources"]} == {USER, GROUP}
    user_schema = scim("GET", f"/Schemas/{USER}").json()
    assert "userName" in [a["name"] for a in user_schema["attributes"]]
    assert is_scim_error(scim("GET", "/Schemas/urn:nope"), 404)


def test_local_administrators_are_out_of_scims_reach(scim: Client, admin: Client) -> None:
    root = next(u for u in admin("GET", "/users").json()["users"] if u["username"] == "root")
    assert is_scim_error(scim("GET", f"/Users/{root['id']}"), 404)
    off = scim("PATCH", f"/Users/{root['id']}", {"schemas": [PATCH], "Operations": [
        {"op": "replace", "path": "active", "value": False}]})
    assert is_scim_error(off, 404)
    assert is_scim_error(scim("DELETE", f"/Users/{root['id']}"), 404)
    assert scim("GET", "/Users", params={"filter": 'userName eq "root"'}).json()["totalResults"] == 0
    assert is_scim_error(scim("POST", "/Users", {"schemas": [USER], "userName": "root"}), 409, "uniqueness")
    assert admin("GET", "/users").status_code == 200, "the administrator's token still works"
