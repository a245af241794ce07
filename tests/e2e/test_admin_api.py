"""The admin REST API (/api/v1) against the real binary: who may call it, users,
service accounts, groups, API tokens (never shown again after creation), OAuth
clients and grants, key rotation, and the OpenAPI document.

The first administrator and their token come from the CLI (`portcullis admin create`,
`portcullis token create`) while the gateway runs; the gateway learns of them through
the change feed. Changes made through the API apply before the response is sent."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from auth_util import auth_config, create_token, create_user, mcp_init, oauth_tokens, register
from gateway import Gateway, running_gateway

API = "/api/v1"


class Admin:
    """An HTTP client for the admin API with the administrator's token."""

    def __init__(self, gw: Gateway, token: str):
        self.gw = gw
        self.token = token

    def __call__(self, method: str, path: str, json: dict | list | None = None, token: str | None = "admin",
                 **kw) -> httpx.Response:
        headers = kw.pop("headers", {})
        t = self.token if token == "admin" else token
        if t:
            headers["Authorization"] = f"Bearer {t}"
        return httpx.request(method, f"{self.gw.base}{API}{path}", json=json, headers=headers, timeout=30, **kw)


@pytest.fixture(scope="module")
def gw() -> Iterator[Gateway]:
    with running_gateway(auth_config()) as g:
        create_user(g, "root")
        yield g


@pytest.fixture(scope="module")
def api(gw: Gateway) -> Admin:
    return Admin(gw, create_token(gw, "root", "admin", name="root-admin"))


def new_user(api: Admin, username: str, **extra) -> dict:
    r = api("POST", "/users", {"username": username, **extra})
    assert r.status_code == 201, r.text
    return r.json()


def new_token(api: Admin, user_id: str, *scopes: str, name: str = "t") -> dict:
    r = api("POST", "/tokens", {"user_id": user_id, "name": name, "scopes": list(scopes), "expires_in_days": 7})
    assert r.status_code == 201, r.text
    return r.json()


def test_openapi_is_served_without_credentials(gw: Gateway) -> None:
    r = httpx.get(f"{gw.base}{API}/openapi.json")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("application/json")
    doc = r.json()
    assert doc["openapi"] == "3.1.0"
    for path in ("/api/v1/users", "/api/v1/tokens", "/api/v1/grants/{id}", "/scim/v2/Users", "/scim/v2/Groups/{id}"):
        assert path in doc["paths"], path


def test_no_or_bad_token_is_401_with_a_bearer_challenge(api: Admin) -> None:
    for token in (None, "pcp_not-a-real-token", "Basic Zm9vOmJhcg=="):
        r = api("GET", "/users", token=token)
        assert r.status_code == 401, (token, r.text)
        assert r.headers["www-authenticate"].startswith("Bearer"), r.headers
        assert r.json()["error"] == "invalid_token"


def test_non_admins_and_tokens_without_the_admin_scope_get_403(gw: Gateway, api: Admin) -> None:
    pat = new_user(api, "pat-nonadmin")
    pat_token = new_token(api, pat["id"], "admin", "vs:alpha")["token"]
    r = api("GET", "/users", token=pat_token)
    assert r.status_code == 403, r.text
    assert r.json()["error"] == "insufficient_scope"
    assert "not an administrator" in r.json()["error_description"]
    # An administrator's token without the admin scope is refused too.
    root = next(u for u in api("GET", "/users").json()["users"] if u["username"] == "root")
    narrow = new_token(api, root["id"], "vs:alpha")["token"]
    r = api("GET", "/tokens", token=narrow)
    assert r.status_code == 403, r.text
    assert "admin scope" in r.json()["error_description"]
    # Mutations are refused as well, and change nothing.
    r = api("POST", "/users", {"username": "sneaky"}, token=pat_token)
    assert r.status_code == 403
    assert all(u["username"] != "sneaky" for u in api("GET", "/users").json()["users"])


def test_users_validation_and_errors(api: Admin) -> None:
    u = new_user(api, "carol", email="carol@example.com", display_name="Carol")
    assert u["kind"] == "user" and u["active"] is True and u["is_admin"] is False
    assert "password_hash" not in u
    dup = api("POST", "/users", {"username": "carol"})
    assert dup.status_code == 409 and "carol" in dup.json()["error_description"]
    unknown = api("POST", "/users", {"username": "x", "colour": "red"})
    assert unknown.status_code == 400 and "colour" in unknown.json()["error_description"]
    missing = api("POST", "/users", {"email": "a@b.c"})
    assert missing.status_code == 400 and "username" in missing.json()["error_description"]
    bad_email = api("POST", "/users", {"username": "d", "email": "not-an-address"})
    assert bad_email.status_code == 400 and "email" in bad_email.json()["error_description"]
    short_pw = api("POST", "/users", {"username": "e", "password": "short"})
    assert short_pw.status_code == 400 and "password" in short_pw.json()["error_description"]
    not_json = api("POST", "/users", content=b"username=x", headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert not_json.status_code == 415
    broken = api("POST", "/users", content=b"{not json", headers={"Content-Type": "application/json"})
    assert broken.status_code == 400
    too_big = api("POST", "/users", {"username": "z" * (70 * 1024)})
    assert too_big.status_code == 413
    assert api("GET", "/users/0123456789abcdef0123456789abcdef").status_code == 404
    assert api("PATCH", "/users/0123456789abcdef0123456789abcdef", {"active": False}).status_code == 404
    assert api("GET", "/users?kind=robot").status_code == 400
    assert api("GET", "/users?knd=user").status_code == 400
    r = api("PATCH", f"/users/{u['id']}", {"display_name": None, "is_admin": True})
    assert r.status_code == 200 and r.json()["display_name"] is None and r.json()["is_admin"] is True
    assert api("PATCH", f"/users/{u['id']}", {}).status_code == 400
    kinds = {x["username"]: x["kind"] for x in api("GET", "/users?kind=user").json()["users"]}
    assert kinds.get("carol") == "user" and all(k == "user" for k in kinds.values())


def test_service_accounts_and_groups(api: Admin) -> None:
    owner = new_user(api, "owner-olga")
    sa = api("POST", "/service-accounts", {"name": "ci-bot", "owner": "owner-olga"})
    assert sa.status_code == 201, sa.text
    assert sa.json()["kind"] == "service" and sa.json()["owner_id"] == owner["id"]
    assert api("POST", "/service-accounts", {"name": "ci-bot"}).status_code == 409
    assert api("POST", "/service-accounts", {"name": "x", "owner": "nobody-here"}).status_code == 400
    services = [u["username"] for u in api("GET", "/users?kind=service").json()["users"]]
    assert "ci-bot" in services and "owner-olga" not in services

    g = api("POST", "/groups", {"display_name": "platform", "members": [owner["id"]]})
    assert g.status_code == 201, g.text
    gid = g.json()["id"]
    assert g.json()["members"] == [owner["id"]]
    assert api("POST", "/groups", {"display_name": "platform"}).status_code == 409
    assert api("POST", "/groups", {"display_name": "x", "members": ["nope"]}).status_code == 400
    added = api("POST", f"/groups/{gid}/members", {"user_id": sa.json()["id"]})
    assert added.status_code == 201
    assert {m["username"] for m in added.json()["members"]} == {"owner-olga", "ci-bot"}
    assert api("POST", f"/groups/{gid}/members", {"user_id": sa.json()["id"]}).status_code == 200
    replaced = api("PUT", f"/groups/{gid}/members", {"user_ids": [sa.json()["id"]]})
    assert [m["username"] for m in replaced.json()["members"]] == ["ci-bot"]
    shown = api("GET", f"/users/{sa.json()['id']}").json()
    assert [g["display_name"] for g in shown["groups"]] == ["platform"]
    assert api("DELETE", f"/groups/{gid}/members/{owner['id']}").status_code == 404
    assert api("DELETE", f"/groups/{gid}/members/{sa.json()['id']}").status_code == 204
    renamed = api("PATCH", f"/groups/{gid}", {"display_name": "platform-eng"})
    assert renamed.status_code == 200 and renamed.json()["display_name"] == "platform-eng"
    assert api("DELETE", f"/groups/{gid}").status_code == 204
    assert api("GET", f"/groups/{gid}").status_code == 404


def test_token_list_never_contains_secrets_and_revocation_applies(gw: Gateway, api: Admin) -> None:
    dave = new_user(api, "dave")
    created = new_token(api, dave["id"], "vs:alpha", name="dave-laptop")
    secret = created["token"]
    assert secret.startswith("pcp_") and created["status"] == "active"
    assert mcp_init(gw, "alpha", secret).status_code == 200
    assert mcp_init(gw, "beta", secret).status_code in (401, 403), "the token names alpha only"

    listing = api("GET", "/tokens")
    assert listing.status_code == 200
    text = listing.text
    assert secret not in text and "pcp_" not in text and "pcs_" not in text
    assert "secret_hash" not in text and '"token"' not in text
    mine = [t for t in listing.json()["tokens"] if t["user_id"] == dave["id"]]
    assert [t["name"] for t in mine] == ["dave-laptop"]
    assert set(mine[0]) >= {"id", "scopes", "expires_at", "status"}
    assert api("GET", f"/tokens?user_id={dave['id']}").json()["tokens"] == mine

    bad = api("POST", "/tokens", {"user_id": dave["id"], "name": "x", "scopes": ["vs:nope"]})
    assert bad.status_code == 400 and "nope" in bad.json()["error_description"]
    bad = api("POST", "/tokens", {"user_id": dave["id"], "name": "x", "scopes": ["vs:alpha"], "expires_in_days": 100000})
    assert bad.status_code == 400
    assert api("POST", "/tokens", {"user_id": "nope", "name": "x", "scopes": ["vs:alpha"]}).status_code == 400

    assert api("DELETE", f"/tokens/{created['id']}").status_code == 204
    assert mcp_init(gw, "alpha", secret).status_code == 401
    assert api("GET", f"/tokens?user_id={dave['id']}").json()["tokens"][0]["status"] == "revoked"
    assert api("DELETE", "/tokens/0123456789abcdef0123456789abcdef").status_code == 404


def test_disabling_and_deleting_a_user_removes_their_tokens(gw: Gateway, api: Admin) -> None:
    erin = new_user(api, "erin")
    secret = new_token(api, erin["id"], "vs:alpha")["token"]
    assert mcp_init(gw, "alpha", secret).status_code == 200
    assert api("PATCH", f"/users/{erin['id']}", {"active": False}).json()["active"] is False
    assert mcp_init(gw, "alpha", secret).status_code == 401
    assert api("PATCH", f"/users/{erin['id']}", {"active": True}).json()["active"] is True
    assert mcp_init(gw, "alpha", secret).status_code == 401, "re-enabling does not revive revoked tokens"

    fred = new_user(api, "fred")
    secret = new_token(api, fred["id"], "vs:alpha")["token"]
    assert mcp_init(gw, "alpha", secret).status_code == 200
    assert api("DELETE", f"/users/{fred['id']}").status_code == 204
    assert mcp_init(gw, "alpha", secret).status_code == 401
    assert api("GET", f"/tokens?user_id={fred['id']}").json()["tokens"] == []
    assert api("GET", f"/users/{fred['id']}").status_code == 404
    assert api("DELETE", f"/users/{fred['id']}").status_code == 404


def test_the_caller_cannot_lock_itself_out(api: Admin) -> None:
    root = next(u for u in api("GET", "/users").json()["users"] if u["username"] == "root")
    assert api("PATCH", f"/users/{root['id']}", {"active": False}).status_code == 400
    assert api("DELETE", f"/users/{root['id']}").status_code == 400
    assert api("GET", "/users").status_code == 200


def test_clients_grants_and_key_rotation(gw: Gateway, api: Admin) -> None:
    create_user(gw, "gina")
    client, tokens = oauth_tokens(gw, "alpha", "gina")
    access = tokens["access_token"]
    assert mcp_init(gw, "alpha", access).status_code == 200

    clients = api("GET", "/clients")
    assert clients.status_code == 200
    assert client["client_id"] in [c["client_id"] for c in clients.json()["clients"]]
    assert "secret" not in clients.text.replace('"confidential"', "")

    gina = next(u for u in api("GET", "/users").json()["users"] if u["username"] == "gina")
    grants = api("GET", f"/grants?user_id={gina['id']}").json()["grants"]
    assert len(grants) == 1 and grants[0]["status"] == "active" and grants[0]["client_id"] == client["client_id"]
    assert api("DELETE", f"/grants/{grants[0]['id']}").status_code == 204
    assert mcp_init(gw, "alpha", access).status_code == 401
    assert api("GET", f"/grants?user_id={gina['id']}").json()["grants"][0]["status"] == "revoked"
    assert api("DELETE", "/grants/nope").status_code == 404

    assert api("DELETE", f"/clients/{client['client_id']}").status_code == 204
    assert api("DELETE", f"/clients/{client['client_id']}").status_code == 404
    other = register(gw)
    assert api("DELETE", f"/clients/{other['client_id']}").status_code == 204

    rotated = api("POST", "/keys/rotate")
    assert rotated.status_code == 200
    kids = [k["kid"] for k in httpx.get(f"{gw.base}/oauth/jwks").json()["keys"]]
    assert rotated.json()["kid"] in kids and len(kids) >= 2
