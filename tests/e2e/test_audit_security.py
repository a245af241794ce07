"""Security events in the audit log, against the real binary: failed and successful
local logins, an OAuth code flow issuing tokens, refresh and RFC 7009 revocation, a
policy stored through the admin API, tokens created with the CLI while the gateway
runs (the chain still verifies), the admin API's audit search (itself recorded), and
no password, token, code or verifier anywhere in the audit database's bytes."""

from __future__ import annotations

import base64
import json
import sqlite3
import subprocess
import time
from collections.abc import Iterator

import httpx
import pytest
from auth_util import (ADMIN_PASSWORD, auth_config, authorize_url, code_from, create_token,
                       create_user, exchange, login_locally, pkce, register)
from gateway import BINARY, ROOT, Gateway, running_gateway
from idp import Browser

WRONG_PASSWORD = "Wrong-Passw0rd-Never-Stored-77"
POLICY = """// marker-policy-text-3141
@id("everyone")
permit(principal, action, resource);
"""


@pytest.fixture(scope="module")
def gw() -> Iterator[Gateway]:
    with running_gateway(auth_config()) as g:
        create_user(g, "root")
        yield g


def events(gw: Gateway, event_type: str) -> list[dict]:
    db = gw.data_dir / "audit.db"
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as c:
        rows = c.execute("SELECT body FROM audit_records WHERE event_type = ? ORDER BY seq",
                         (event_type,)).fetchall()
    return [json.loads(r[0]) for r in rows]


def jwt_claims(token: str) -> dict:
    payload = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


def admin_token(gw: Gateway) -> str:
    if not hasattr(gw, "_admin"):
        gw._admin = create_token(gw, "root", "admin", name="admin-e2e")  # type: ignore[attr-defined]
    return gw._admin  # type: ignore[attr-defined]


SEEN_SECRETS: list[str] = [ADMIN_PASSWORD, WRONG_PASSWORD]


def test_failed_then_successful_login(gw: Gateway) -> None:
    before_failed = len(events(gw, "auth.login_failed"))
    before_ok = len(events(gw, "auth.login"))
    r = httpx.post(f"{gw.base}/login", data={"username": "root", "password": WRONG_PASSWORD})
    assert r.status_code == 401
    r = httpx.post(f"{gw.base}/login", data={"username": "root", "password": ADMIN_PASSWORD},
                   headers={"User-Agent": "e2e-browser/1"})
    assert r.status_code == 200, r.text

    failed = events(gw, "auth.login_failed")[before_failed:]
    assert len(failed) == 1, failed
    f = failed[0]
    assert f["actor"]["kind"] == "anonymous"
    assert f["actor"]["ip"] == "127.0.0.1"
    assert (f["detail"]["username"], f["detail"]["reason"], f["detail"]["method"]) == \
        ("root", "bad_password", "password")

    ok = events(gw, "auth.login")[before_ok:]
    assert len(ok) == 1, ok
    a = ok[0]["actor"]
    assert (a["kind"], a["username"], a["auth_method"], a["user_agent"]) == \
        ("user", "root", "password", "e2e-browser/1")
    assert ok[0]["detail"]["flow"] == "account_page"


def test_oauth_code_flow_refresh_and_revocation(gw: Gateway) -> None:
    before_issued = len(events(gw, "token.issued"))
    before_revoked = len(events(gw, "token.revoked"))
    client = register(gw)
    verifier, challenge = pkce()
    with Browser() as b:
        final = login_locally(b, authorize_url(gw, client["client_id"], "alpha", challenge), "root")
    code = code_from(final)
    r = exchange(gw, client["client_id"], code, verifier)
    assert r.status_code == 200, r.text
    first = r.json()
    r = httpx.post(f"{gw.base}/oauth/token", data={
        "grant_type": "refresh_token", "refresh_token": first["refresh_token"], "client_id": client["client_id"]})
    assert r.status_code == 200, r.text
    second = r.json()
    SEEN_SECRETS.extend([code, verifier, first["access_token"], first["refresh_token"],
                         second["access_token"], second["refresh_token"]])

    issued = events(gw, "token.issued")[before_issued:]
    assert [e["detail"]["grant_type"] for e in issued] == ["authorization_code", "refresh_token"], issued
    for e, tokens in zip(issued, (first, second)):
        claims = jwt_claims(tokens["access_token"])
        d = e["detail"]
        assert d["jti"] == claims["jti"]
        assert d["grant_id"] == claims["sid"]
        assert d["client_id"] == client["client_id"]
        assert d["audience"] == gw.url("alpha")
        assert d["virtual_server"] == "alpha"
        assert d["scope"] == "mcp"
        assert e["actor"]["username"] == "root"
        assert e["actor"]["client_id"] == client["client_id"]

    # The login inside the flow is recorded as one too, tied to the client.
    logins = [e for e in events(gw, "auth.login") if e["detail"].get("client_id") == client["client_id"]]
    assert len(logins) == 1 and logins[0]["detail"]["flow"] == "oauth"

    r = httpx.post(f"{gw.base}/oauth/revoke", data={"token": second["refresh_token"],
                                                    "client_id": client["client_id"]})
    assert r.status_code == 200
    revoked = events(gw, "token.revoked")[before_revoked:]
    assert len(revoked) == 1, revoked
    d = revoked[0]["detail"]
    assert (d["reason"], d["grant_id"], d["via"]) == \
        ("revoked_by_client", jwt_claims(second["access_token"])["sid"], "rfc7009")

    # A spent refresh token coming back revokes nothing new (the grant is gone) but a
    # reused one on a live grant is recorded as an automatic revocation.
    client2 = register(gw)
    verifier2, challenge2 = pkce()
    with Browser() as b:
        final2 = login_locally(b, authorize_url(gw, client2["client_id"], "alpha", challenge2), "root")
    r = exchange(gw, client2["client_id"], code_from(final2), verifier2)
    assert r.status_code == 200, r.text
    t = r.json()
    SEEN_SECRETS.extend([code_from(final2), verifier2, t["access_token"], t["refresh_token"]])
    refresh = {"grant_type": "refresh_token", "refresh_token": t["refresh_token"], "client_id": client2["client_id"]}
    r = httpx.post(f"{gw.base}/oauth/token", data=refresh)
    assert r.status_code == 200
    SEEN_SECRETS.extend([r.json()["access_token"], r.json()["refresh_token"]])
    r = httpx.post(f"{gw.base}/oauth/token", data=refresh)
    assert r.status_code == 400 and r.json()["error"] == "invalid_grant"
    reused = [e for e in events(gw, "token.revoked") if e["detail"]["reason"] == "refresh_token_reused"]
    assert len(reused) == 1
    assert reused[0]["detail"]["grant_id"] == jwt_claims(t["access_token"])["sid"]


def test_policy_put_through_the_admin_api(gw: Gateway) -> None:
    token = admin_token(gw)
    SEEN_SECRETS.append(token)
    before = len(events(gw, "policy.changed"))
    r = httpx.put(f"{gw.base}/api/v1/policies/everyone", content=POLICY,
                  headers={"Authorization": f"Bearer {token}", "Content-Type": "text/plain"})
    assert r.status_code == 200, r.text
    changed = events(gw, "policy.changed")[before:]
    assert len(changed) == 1, changed
    d = changed[0]["detail"]
    import hashlib
    assert d["sha256"] == hashlib.sha256(POLICY.encode()).hexdigest()
    assert (d["name"], d["operation"], d["via"], d["applied"], d["version"]) == \
        ("everyone", "put", "api", True, r.json()["version"])
    assert changed[0]["actor"]["username"] == "root"
    assert changed[0]["actor"]["auth_method"] == "api_token"


def test_cli_token_create_while_running_is_recorded_and_the_chain_verifies(gw: Gateway) -> None:
    before = len(events(gw, "token.issued"))
    secret = create_token(gw, "root", "vs:alpha", name="cli-made")
    SEEN_SECRETS.append(secret)
    issued = events(gw, "token.issued")[before:]
    assert len(issued) == 1, issued
    e = issued[0]
    assert e["actor"]["kind"] == "admin_cli"
    assert (e["detail"]["name"], e["detail"]["via"], e["detail"]["scopes"]) == ("cli-made", "cli", ["vs:alpha"])
    # The gateway keeps writing after the CLI's records; the chain stays whole.
    token = admin_token(gw)
    r = httpx.get(f"{gw.base}/api/v1/audit/status", headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 200 and r.json()["healthy"] is True
    v = subprocess.run([str(BINARY), "audit", "verify", "-c", str(gw.config_path)], cwd=ROOT,
                       capture_output=True, text=True, timeout=60)
    assert v.returncode == 0, v.stdout + v.stderr


def test_admin_api_search_is_recorded(gw: Gateway) -> None:
    token = admin_token(gw)
    h = {"Authorization": f"Bearer {token}"}
    before = len(events(gw, "audit.read"))
    r = httpx.get(f"{gw.base}/api/v1/audit", params={"type": "auth.login_failed", "since": "1h"}, headers=h)
    assert r.status_code == 200, r.text
    records = r.json()["records"]
    assert records and all(x["event_type"] == "auth.login_failed" for x in records)
    assert all("integrity" in x for x in records)
    r = httpx.get(f"{gw.base}/api/v1/audit", params={"user": "root", "type": "policy.changed"}, headers=h)
    assert [x["detail"]["name"] for x in r.json()["records"]] == ["everyone"]
    reads = events(gw, "audit.read")[before:]
    assert len(reads) == 2 and reads[0]["actor"]["username"] == "root"
    bad = httpx.get(f"{gw.base}/api/v1/audit", params={"outcome": "sideways"}, headers=h)
    assert bad.status_code == 400 and "outcome" in bad.json()["error_description"]
    bad = httpx.get(f"{gw.base}/api/v1/audit", params={"since": "the dawn of time"}, headers=h)
    assert bad.status_code == 400 and "since" in bad.json()["error_description"]


def test_refused_credential_at_an_mcp_endpoint_is_recorded(gw: Gateway) -> None:
    forged = "pc_forged0123456789abcdefghijklmnopqrstuvwxyz"
    SEEN_SECRETS.append(forged)
    before = len(events(gw, "auth.rejected"))
    h = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream",
         "Authorization": f"Bearer {forged}", "User-Agent": "probe/" + "x" * 1000}
    body = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "e2e", "version": "1"}}}
    r = httpx.post(gw.url("alpha"), content=json.dumps(body), headers=h, timeout=30)
    assert r.status_code == 401
    # Recorded off the refusal's path: wait until it is there.
    deadline = time.monotonic() + 20
    while len(events(gw, "auth.rejected")) == before and time.monotonic() < deadline:
        time.sleep(0.05)
    new = events(gw, "auth.rejected")[before:]
    assert len(new) == 1, new
    e = new[0]
    assert e["actor"]["kind"] == "anonymous" and e["actor"]["ip"] == "127.0.0.1"
    assert e["actor"]["user_agent"].startswith("probe/") and len(e["actor"]["user_agent"]) == 256
    assert e["target"]["virtual_server"] == "alpha"
    assert e["detail"]["status"] == 401 and e["detail"]["path"] == "/mcp/alpha"
    assert e["detail"]["reason"]
    assert forged not in json.dumps(e)


def test_no_secret_anywhere_in_the_audit_database(gw: Gateway) -> None:
    raw = b""
    for name in ("audit.db", "audit.db-wal"):
        p = gw.data_dir / name
        if p.exists():
            raw += p.read_bytes()
    assert raw, "the audit database exists"
    assert len(SEEN_SECRETS) > 10, "the earlier tests ran and collected their secrets"
    for s in SEEN_SECRETS:
        assert s.encode() not in raw, f"a secret ({s[:6]}...) is in the audit database"
    assert b"marker-policy-text-3141" not in raw, "policy text is recorded by digest only"
    # The records that name credentials do so by id.
    assert b'"jti"' in raw and b"token.issued" in raw
