"""Helpers for tests of the gateway's authentication: an auth-enabled config, local
users and tokens through the CLI, and a browser-less authorization-code flow with the
local login."""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import sys
import urllib.parse
from pathlib import Path

import httpx
from gateway import Gateway
from idp import Browser, parse_forms

TINY = Path(__file__).resolve().parent / "servers" / "tiny_stdio.py"
ADMIN_PASSWORD = "correct-horse-battery-staple"
REDIRECT = "http://127.0.0.1:9/callback"


def auth_config(vservers: list[dict] | None = None, **auth) -> dict:
    """Two virtual servers over the tiny stdio server, authentication required."""
    up = {"name": "tiny", "transport": "stdio", "command": sys.executable, "args": [str(TINY), "auth-tests"]}
    return {
        "auth": {"mode": "required", **auth},
        "upstreams": [up],
        "virtual_servers": vservers or [
            {"name": "alpha", "upstreams": [{"upstream": "tiny", "prefix": ""}]},
            {"name": "beta", "upstreams": [{"upstream": "tiny", "prefix": ""}]},
        ],
    }


def create_user(gw: Gateway, username: str) -> None:
    """A local (password) user, created with `portcullis admin create`."""
    gw.cli("admin", "create", "--username", username, env={"PORTCULLIS_ADMIN_PASSWORD": ADMIN_PASSWORD})


def create_token(gw: Gateway, user: str, *scopes: str, name: str = "test") -> str:
    args = ["token", "create", "--user", user, "--name", name]
    for s in scopes:
        args += ["--scope", s]
    out = gw.cli(*args).strip().splitlines()
    token = [line for line in out if line.startswith(("pcp_", "pcs_"))]
    assert token, out
    wait_known(gw, token[-1], scopes)
    return token[-1]


def wait_known(gw: Gateway, token: str, scopes: tuple[str, ...]) -> None:
    """The CLI is another process: the gateway learns of the token through its change
    feed (polled every 100 ms). Wait until it does, so tests start from a known state."""
    import time
    deadline = time.monotonic() + 10
    vs = next((s[3:] for s in scopes if s.startswith("vs:") and s != "vs:*"), None)
    while time.monotonic() < deadline:
        if vs:
            r = mcp_init(gw, vs, token)
            if r.status_code != 401 or "revoked" not in r.headers.get("www-authenticate", ""):
                return
        elif "admin" in scopes:
            r = httpx.get(f"{gw.base}/api/v1/users", headers={"Authorization": f"Bearer {token}"})
            if r.status_code != 401:
                return
        else:
            time.sleep(0.5)
            return
        time.sleep(0.05)
    raise AssertionError("the gateway never learned of the new token")


def token_id(gw: Gateway, name: str) -> str:
    """Id of the token called `name`, from `token list` (JSON lines or a table)."""
    out = gw.cli("token", "list")
    for line in out.splitlines():
        if name in line:
            for word in line.replace(",", " ").replace('"', " ").split():
                if len(word) == 32 and all(c in "0123456789abcdef" for c in word):
                    return word
    raise AssertionError(f"no token named {name!r} in:\n{out}")


def pkce() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    return verifier, challenge


def register(gw: Gateway, redirect_uri: str = REDIRECT, **extra) -> dict:
    body = {"redirect_uris": [redirect_uri], "client_name": "e2e client", "token_endpoint_auth_method": "none", **extra}
    r = httpx.post(f"{gw.base}/oauth/register", json=body)
    assert r.status_code == 201, r.text
    return r.json()


def authorize_url(gw: Gateway, client_id: str, vs: str, challenge: str, redirect_uri: str = REDIRECT,
                  **extra: str) -> str:
    q = {"response_type": "code", "client_id": client_id, "redirect_uri": redirect_uri,
         "code_challenge": challenge, "code_challenge_method": "S256", "state": "st-1",
         "resource": gw.url(vs), **extra}
    q = {k: v for k, v in q.items() if v is not None}
    return f"{gw.base}/oauth/authorize?{urllib.parse.urlencode(q)}"


def login_locally(browser: Browser, url: str, username: str, password: str = ADMIN_PASSWORD,
                  redirect_uri: str = REDIRECT) -> str:
    """Walk consent and the local login form; return the final redirect to the client."""
    def at_client(u: str) -> bool:
        return u.startswith(redirect_uri)

    landing = browser.follow(url, at_client)
    assert landing.response is not None and landing.response.status_code == 200, landing.response and landing.response.text
    consent = [f for f in landing.forms if f.action.endswith("/oauth/consent")][0]
    landing = browser.submit(consent, button="approve", stop=at_client)
    if landing.response is None:
        return landing.url
    form = [f for f in landing.forms if f.action.endswith("/oauth/local")][0]
    landing = browser.submit(form, {"username": username, "password": password}, stop=at_client)
    assert landing.response is None, landing.response.text
    return landing.url


def code_from(url: str) -> str:
    q = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(url).query))
    assert "code" in q, url
    return q["code"]


def exchange(gw: Gateway, client_id: str, code: str, verifier: str, redirect_uri: str = REDIRECT,
             **extra: str) -> httpx.Response:
    form = {"grant_type": "authorization_code", "code": code, "code_verifier": verifier,
            "redirect_uri": redirect_uri, "client_id": client_id, **extra}
    return httpx.post(f"{gw.base}/oauth/token", data=form)


def oauth_tokens(gw: Gateway, vs: str, username: str) -> tuple[dict, dict]:
    """(client registration, token response) for `username` at `vs` via local login."""
    client = register(gw)
    verifier, challenge = pkce()
    with Browser() as b:
        final = login_locally(b, authorize_url(gw, client["client_id"], vs, challenge), username)
    r = exchange(gw, client["client_id"], code_from(final), verifier)
    assert r.status_code == 200, r.text
    return client, r.json()


def mcp_init(gw: Gateway, vs: str, token: str | None) -> httpx.Response:
    h = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}
    if token:
        h["Authorization"] = f"Bearer {token}"
    body = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "e2e", "version": "1"}}}
    return httpx.post(gw.url(vs), content=json.dumps(body), headers=h, timeout=30)


def mcp_call(gw: Gateway, vs: str, token: str, session: str, method: str = "tools/list",
             params: dict | None = None) -> httpx.Response:
    h = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream",
         "Authorization": f"Bearer {token}", "Mcp-Session-Id": session, "MCP-Protocol-Version": "2025-11-25"}
    body = {"jsonrpc": "2.0", "id": 2, "method": method, "params": params or {}}
    return httpx.post(gw.url(vs), content=json.dumps(body), headers=h, timeout=30)
