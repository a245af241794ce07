"""What the gateway refuses, each with its precise error: wrong audience, expired and
revoked tokens, replayed codes, PKCE mismatch, unregistered redirect URIs and open
redirects, CIMD documents on private addresses, refresh-token reuse, another user's
session, and no token passthrough to upstreams."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.parse
from pathlib import Path

import httpx
import pytest
from auth_util import (REDIRECT, auth_config, authorize_url, code_from, create_token, create_user,
                       exchange, login_locally, mcp_call, mcp_init, oauth_tokens, pkce, register)
from gateway import free_port, running_gateway
from idp import Browser

SERVERS = Path(__file__).resolve().parent / "servers"


@pytest.fixture(scope="module")
def gw():
    with running_gateway(auth_config()) as g:
        create_user(g, "alice")
        create_user(g, "bob")
        yield g


def challenge_of(r: httpx.Response) -> str:
    return r.headers.get("www-authenticate", "")


def test_no_token_gets_the_rfc9728_challenge(gw) -> None:
    r = mcp_init(gw, "alpha", None)
    assert r.status_code == 401
    www = challenge_of(r)
    assert www.startswith("Bearer ") and f'resource_metadata="{gw.base}/.well-known/oauth-protected-resource/mcp/alpha"' in www
    assert 'scope="mcp"' in www
    prm = httpx.get(f"{gw.base}/.well-known/oauth-protected-resource/mcp/alpha").json()
    assert prm["resource"] == gw.url("alpha") and prm["authorization_servers"] == [gw.base]
    meta = httpx.get(f"{gw.base}/.well-known/oauth-authorization-server").json()
    assert meta["issuer"] == gw.base and meta["code_challenge_methods_supported"] == ["S256"]
    assert meta["authorization_response_iss_parameter_supported"] is True


def test_garbage_token_is_invalid_token(gw) -> None:
    for bad in ["nonsense", "a.b.c", "pcp_unknown"]:
        r = mcp_init(gw, "alpha", bad)
        assert r.status_code == 401, bad
        assert 'error="invalid_token"' in challenge_of(r), bad


def test_token_for_one_virtual_server_is_useless_at_another(gw) -> None:
    _, tokens = oauth_tokens(gw, "alpha", "alice")
    assert mcp_init(gw, "alpha", tokens["access_token"]).status_code == 200
    r = mcp_init(gw, "beta", tokens["access_token"])
    assert r.status_code == 401
    assert "not valid for this resource" in challenge_of(r)
    pat = create_token(gw, "alice", "vs:alpha", name="only-alpha")
    assert mcp_init(gw, "alpha", pat).status_code == 200
    assert mcp_init(gw, "beta", pat).status_code == 401


def test_expired_access_token_is_refused() -> None:
    with running_gateway(auth_config(access_token_ttl_secs=1)) as g:
        create_user(g, "carol")
        _, tokens = oauth_tokens(g, "alpha", "carol")
        assert tokens["expires_in"] <= 1
        time.sleep(2.1)  # past the token's one-second lifetime; not a timing assertion
        r = mcp_init(g, "alpha", tokens["access_token"])
        assert r.status_code == 401 and "token expired" in challenge_of(r)


def test_replayed_code_is_refused_and_revokes_the_grant(gw) -> None:
    client = register(gw)
    verifier, challenge = pkce()
    with Browser() as b:
        code = code_from(login_locally(b, authorize_url(gw, client["client_id"], "alpha", challenge), "alice"))
    first = exchange(gw, client["client_id"], code, verifier)
    assert first.status_code == 200
    assert first.headers["cache-control"] == "no-store"
    access = first.json()["access_token"]
    assert mcp_init(gw, "alpha", access).status_code == 200
    again = exchange(gw, client["client_id"], code, verifier)
    assert again.status_code == 400 and again.json()["error"] == "invalid_grant"
    assert "already used" in again.json()["error_description"]
    # OAuth 2.1 §4.1.3: tokens issued from a replayed code are revoked.
    deadline = time.monotonic() + 5
    while mcp_init(gw, "alpha", access).status_code != 401:
        assert time.monotonic() < deadline, "token from the replayed code still works"
        time.sleep(0.05)


def test_pkce_mismatch_and_missing_pkce(gw) -> None:
    client = register(gw)
    verifier, challenge = pkce()
    with Browser() as b:
        code = code_from(login_locally(b, authorize_url(gw, client["client_id"], "alpha", challenge), "alice"))
    wrong, _ = pkce()
    r = exchange(gw, client["client_id"], code, wrong)
    assert r.status_code == 400 and r.json()["error"] == "invalid_grant" and "PKCE" in r.json()["error_description"]
    # Without S256 the browser goes back to the client with invalid_request (and iss).
    url = authorize_url(gw, client["client_id"], "alpha", challenge, code_challenge_method="plain")
    r = httpx.get(url)
    assert r.status_code == 303
    q = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(r.headers["location"]).query))
    assert r.headers["location"].startswith(REDIRECT)
    assert q["error"] == "invalid_request" and q["iss"] == gw.base and q["state"] == "st-1"


def test_resource_is_required_and_must_be_ours(gw) -> None:
    client = register(gw)
    _, challenge = pkce()
    for resource in [None, "https://elsewhere.example/mcp", f"{gw.base}/mcp/nope"]:
        url = authorize_url(gw, client["client_id"], "alpha", challenge, resource=resource)
        r = httpx.get(url)
        assert r.status_code == 303, resource
        q = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(r.headers["location"]).query))
        assert q["error"] == "invalid_target", resource


def test_unregistered_redirect_uri_is_never_followed(gw) -> None:
    client = register(gw)
    _, challenge = pkce()
    for evil in ["https://evil.example/callback", "http://127.0.0.1:9/callback/../steal",
                 "http://127.0.0.1:9/callbackx", "http://127.0.0.1:10/callback"]:
        r = httpx.get(authorize_url(gw, client["client_id"], "alpha", challenge, redirect_uri=evil))
        assert r.status_code == 400, evil
        assert "location" not in r.headers, evil
        assert "redirect_uri is not registered" in r.text
    # Unknown client: an error page, never a redirect, whatever redirect_uri says.
    r = httpx.get(authorize_url(gw, "no-such-client", "alpha", challenge, redirect_uri="https://evil.example/"))
    assert r.status_code == 400 and "location" not in r.headers


def test_cimd_document_on_a_private_address_is_refused(gw) -> None:
    _, challenge = pkce()
    for client_id in ["https://127.0.0.1/client.json", "https://10.1.2.3/client.json",
                      "https://169.254.169.254/latest/meta-data", "http://127.0.0.1:9/client.json"]:
        r = httpx.get(authorize_url(gw, client_id, "alpha", challenge), timeout=15)
        assert r.status_code == 400, client_id
        assert "location" not in r.headers
        assert "refused" in r.text, (client_id, r.text)


def test_refresh_token_rotation_and_reuse_detection(gw) -> None:
    client, tokens = oauth_tokens(gw, "alpha", "alice")
    form = {"grant_type": "refresh_token", "client_id": client["client_id"], "refresh_token": tokens["refresh_token"]}
    r = httpx.post(f"{gw.base}/oauth/token", data=form)
    assert r.status_code == 200, r.text
    rotated = r.json()
    assert rotated["refresh_token"] != tokens["refresh_token"]
    assert mcp_init(gw, "alpha", rotated["access_token"]).status_code == 200
    # The old refresh token comes back: invalid_grant, and the whole grant dies.
    reuse = httpx.post(f"{gw.base}/oauth/token", data=form)
    assert reuse.status_code == 400 and reuse.json()["error"] == "invalid_grant"
    assert "already used" in reuse.json()["error_description"]
    later = httpx.post(f"{gw.base}/oauth/token", data={**form, "refresh_token": rotated["refresh_token"]})
    assert later.status_code == 400 and later.json()["error"] == "invalid_grant"
    r = mcp_init(gw, "alpha", rotated["access_token"])
    assert r.status_code == 401 and "revoked" in challenge_of(r)


def test_another_users_session_id_is_not_found(gw) -> None:
    alice = create_token(gw, "alice", "vs:alpha", name="alice-session")
    bob = create_token(gw, "bob", "vs:alpha", name="bob-session")
    r = mcp_init(gw, "alpha", alice)
    sid = r.headers["mcp-session-id"]
    assert mcp_call(gw, "alpha", alice, sid).status_code == 200
    stolen = mcp_call(gw, "alpha", bob, sid)
    assert stolen.status_code == 404
    # A second token of the same person keeps the session (it is bound to the user).
    alice2 = create_token(gw, "alice", "vs:alpha", name="alice-second")
    assert mcp_call(gw, "alpha", alice2, sid).status_code == 200


def test_token_is_never_forwarded_upstream() -> None:
    port = free_port()
    proc = subprocess.Popen([sys.executable, str(SERVERS / "header_echo_http.py"), str(port)],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().startswith("READY")
        cfg = auth_config([{"name": "echo", "upstreams": [{"upstream": "hdr", "prefix": ""}]}])
        cfg["upstreams"] = [{"name": "hdr", "transport": "streamable_http", "protocol": "legacy",
                             "url": f"http://127.0.0.1:{port}/mcp"}]
        with running_gateway(cfg) as g:
            create_user(g, "dave")
            pat = create_token(g, "dave", "vs:echo")
            r = mcp_init(g, "echo", pat)
            assert r.status_code == 200, r.text
            sid = r.headers["mcp-session-id"]
            r = mcp_call(g, "echo", pat, sid, "tools/call", {"name": "headers", "arguments": {}})
            assert r.status_code == 200, r.text
            text = r.text
            seen = json.loads(json.loads([line[5:] for line in text.splitlines() if line.startswith("data:")][-1])["result"]["content"][0]["text"]) \
                if r.headers["content-type"].startswith("text/event-stream") else json.loads(r.json()["result"]["content"][0]["text"])
            assert seen, "the upstream saw requests"
            for h in seen:
                assert "authorization" not in h, h
                assert pat not in json.dumps(h)
    finally:
        proc.terminate()
        proc.wait(5)


def test_password_guessing_is_throttled(gw) -> None:
    create_user(gw, "mallory-target")
    for _ in range(5):
        r = httpx.post(f"{gw.base}/login", data={"username": "mallory-target", "password": "wrong-guess"})
        assert r.status_code == 401
    # Even the right password is refused while the account is throttled.
    r = httpx.post(f"{gw.base}/login", data={"username": "mallory-target", "password": "correct-horse-battery-staple"})
    assert r.status_code == 429 and "Too many failed sign-in attempts" in r.text
    # Other accounts are unaffected.
    r = httpx.post(f"{gw.base}/login", data={"username": "alice", "password": "correct-horse-battery-staple"})
    assert r.status_code == 200
