"""Helpers for the end-to-end tests of the gateway's built-in OAuth 2.1 authorization server
(test_auth_sso.py, test_auth_mcp_client.py, test_auth_conformance.py).

A client's view of the flow, step by step, with plain httpx and idp.Browser:

    challenge = unauthenticated_challenge(gw.url("dev"))     # 401 + WWW-Authenticate params
    client = register(gw.base, redirect_uri)                   # DCR
    verifier, url = authorization_url(gw.base, client_id, redirect_uri, resource)
    landing = approve_consent(browser, url, stop=...)          # consent page, approve
    final = local_login(browser, landing, "carol", PASSWORD, redirect_uri)
    tokens = exchange_code(gw.base, client, code, verifier, redirect_uri, resource)
    sid = mcp_initialize(gw.url("dev"), tokens["access_token"])
"""

from __future__ import annotations

import itertools
import json
import re
import secrets
import urllib.parse
from collections.abc import Callable

import httpx
from gateway import Gateway, post, rpc_result
from idp import Browser, Form, Landing, pkce_pair

LOCAL_PASSWORD = "correct horse battery staple"
_ids = itertools.count(1)


def create_local_admin(gw: Gateway, username: str, password: str = LOCAL_PASSWORD) -> None:
    """`portcullis admin create --username U` with the password from the environment."""
    gw.cli("admin", "create", "--username", username, env={"PORTCULLIS_ADMIN_PASSWORD": password})


def parse_challenge(header: str) -> dict[str, str]:
    """The auth-params of a `Bearer k="v", ...` WWW-Authenticate value."""
    assert header.lower().startswith("bearer "), header
    return dict(re.findall(r'([A-Za-z_]+)="([^"]*)"', header))


def unauthenticated_challenge(url: str) -> dict[str, str]:
    """POST an initialize without a token; assert the 401 and return its challenge params."""
    r = post(url, {"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
        "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "e2e", "version": "1"}}})
    assert r.status_code == 401, f"expected 401 without a token, got {r.status_code}: {r.text}"
    assert "www-authenticate" in r.headers, r.headers
    return parse_challenge(r.headers["www-authenticate"])


def register(issuer: str, redirect_uri: str, **metadata) -> dict:
    """Dynamic Client Registration at <issuer>/oauth/register; the 201 answer."""
    body = {"client_name": "portcullis-e2e", "redirect_uris": [redirect_uri], **metadata}
    r = httpx.post(f"{issuer}/oauth/register", json=body, timeout=10)
    assert r.status_code == 201, f"registration failed: HTTP {r.status_code}: {r.text}"
    return r.json()


def authorization_url(issuer: str, client_id: str, redirect_uri: str, resource: str, *,
                      state: str | None = None, scope: str | None = "mcp") -> tuple[str, str, str]:
    """(code_verifier, state, URL) of an authorization request at the gateway."""
    verifier, challenge = pkce_pair()
    state = state or secrets.token_urlsafe(16)
    params = {"response_type": "code", "client_id": client_id, "redirect_uri": redirect_uri,
              "code_challenge": challenge, "code_challenge_method": "S256", "state": state,
              "resource": resource}
    if scope is not None:
        params["scope"] = scope
    return verifier, state, f"{issuer}/oauth/authorize?{urllib.parse.urlencode(params)}"


def consent_form(landing: Landing) -> Form:
    """The gateway's consent form (POST /oauth/consent with request, csrf, decision buttons)."""
    r = landing.response
    assert r is not None and r.status_code == 200, \
        f"expected the consent page at {landing.url}, got {r and r.status_code}: {r and r.text[:1000]}"
    forms = [f for f in landing.forms if f.action.endswith("/oauth/consent")]
    assert len(forms) == 1, f"no consent form at {landing.url}: {r.text[:1000]}"
    form = forms[0]
    assert {"request", "csrf"} <= set(form.fields), form
    assert ("decision", "approve") in form.buttons and ("decision", "deny") in form.buttons, form.buttons
    return form


def approve_consent(browser: Browser, url: str, stop: Callable[[str], bool] | None = None,
                    decision: str = "approve") -> Landing:
    """Open the authorization URL, check the consent page, press `decision`, follow redirects."""
    page = browser.follow(url)
    form = consent_form(page)
    return browser.submit(form, button=decision, stop=stop)


def stop_at(prefix: str) -> Callable[[str], bool]:
    """A follow() stop condition: do not fetch URLs starting with `prefix` (the client's
    redirect URI, where nobody listens)."""
    return lambda u: u.startswith(prefix)


def local_login(browser: Browser, landing: Landing, username: str, password: str, redirect_uri: str) -> str:
    """On the gateway's local password form, sign in; return the final client redirect URL."""
    r = landing.response
    assert r is not None and r.status_code == 200, \
        f"expected the local login form at {landing.url}, got {r and r.status_code}: {r and r.text[:1000]}"
    assert urllib.parse.urlsplit(landing.url).path == "/oauth/local", landing.url
    forms = [f for f in landing.forms if f.method == "POST" and "password" in f.inputs.values()]
    assert len(forms) == 1, r.text[:1000]
    done = browser.submit(forms[0], {"username": username, "password": password}, stop=stop_at(redirect_uri))
    assert done.response is None, (
        f"local login did not redirect to the client: {done.url} HTTP {done.response.status_code}: "
        f"{done.response.text[:1000]}")
    return done.url


def exchange_code(issuer: str, client: dict, code: str, verifier: str, redirect_uri: str,
                  resource: str | None) -> httpx.Response:
    """POST /oauth/token (authorization_code), authenticating as the registration says."""
    data = {"grant_type": "authorization_code", "code": code, "code_verifier": verifier,
            "redirect_uri": redirect_uri}
    if resource is not None:
        data["resource"] = resource
    auth = None
    method = client.get("token_endpoint_auth_method", "none")
    if method == "client_secret_basic":
        auth = (urllib.parse.quote(client["client_id"], safe=""), urllib.parse.quote(client["client_secret"], safe=""))
    elif method == "client_secret_post":
        data.update(client_id=client["client_id"], client_secret=client["client_secret"])
    else:
        data["client_id"] = client["client_id"]
    return httpx.post(f"{issuer}/oauth/token", data=data, auth=auth, timeout=10)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def mcp_initialize(url: str, token: str) -> httpx.Response:
    return post(url, {"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
        "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "e2e", "version": "1"}}},
        headers=bearer(token))


def mcp_session(url: str, token: str) -> str:
    """initialize + notifications/initialized with the bearer token; the session id."""
    r = mcp_initialize(url, token)
    assert r.status_code == 200, f"initialize with a token: HTTP {r.status_code}: {r.text}\n{r.headers}"
    sid = r.headers["mcp-session-id"]
    n = post(url, {"jsonrpc": "2.0", "method": "notifications/initialized"}, session=sid, headers=bearer(token))
    assert n.status_code in (200, 202), n.text
    return sid


def mcp_call(url: str, token: str, sid: str, method: str, params: dict | None = None) -> dict:
    """One JSON-RPC request on a session, with the bearer token; the JSON-RPC message."""
    body = {"jsonrpc": "2.0", "id": next(_ids), "method": method, "params": params or {}}
    r = post(url, body, session=sid, headers=bearer(token))
    assert r.status_code == 200, f"{method}: HTTP {r.status_code}: {r.text}"
    return rpc_result(r)


def echo_via(url: str, token: str, text: str) -> str:
    """initialize, tools/list, tools/call tiny_echo; the echoed text."""
    sid = mcp_session(url, token)
    tools = mcp_call(url, token, sid, "tools/list")
    names = {t["name"] for t in tools["result"]["tools"]}
    assert "tiny_echo" in names, tools
    msg = mcp_call(url, token, sid, "tools/call", {"name": "tiny_echo", "arguments": {"text": text}})
    assert "result" in msg, msg
    return msg["result"]["content"][0]["text"]


def jwts_in(value: object) -> list[str]:
    """Every compact-JWS-looking string inside a JSON value."""
    out: list[str] = []
    if isinstance(value, dict):
        for v in value.values():
            out += jwts_in(v)
    elif isinstance(value, list):
        for v in value:
            out += jwts_in(v)
    elif isinstance(value, str):
        out += re.findall(r"eyJ[A-Za-z0-9_-]+\.eyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+", value)
    return out


def dump(value: object) -> str:
    return json.dumps(value, indent=1, sort_keys=True)
