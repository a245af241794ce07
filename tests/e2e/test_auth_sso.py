"""Single sign-on through a real OpenID Provider (npm oidc-provider 9.13.3 on loopback), with
no browser: a client goes 401 -> protected-resource metadata -> AS metadata -> DCR ->
/oauth/authorize -> the gateway's consent page -> the IdP login -> /oauth/callback -> code
-> token, then initializes an MCP session and calls a tool with the access token.

Also: IdP groups (from a configurable claim) decide who may use a virtual server; the
access token is the gateway's own (aud = the virtual server, iss = the gateway) and nothing
the IdP issued reaches the client; and a client identified by a Client ID Metadata
Document (served from loopback) completes the flow with a local account made by the CLI.
"""

from __future__ import annotations

import html
import http.server
import json
import re
import threading
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import httpx
import pytest
from auth_flow import (LOCAL_PASSWORD, approve_consent, authorization_url, consent_form, create_local_admin,
                       dump, echo_via, exchange_code, jwts_in, local_login, mcp_initialize, parse_challenge,
                       register, stop_at, unauthenticated_challenge)
from e2e_util import tiny_upstream
from gateway import Gateway, free_port, running_gateway
from idp import Browser, Idp, jwt_header, jwt_payload, origin, query_params, running_idp

IDP_CLIENT_ID = "portcullis-gw"
IDP_CLIENT_SECRET = "gw-secret-at-the-idp"
GROUPS = {"alice": ["eng", "staff"], "bob": ["sales"]}


@dataclass
class Sso:
    gw: Gateway
    idp: Idp


def sso_config(idp: Idp, *, groups_claim: str = "groups", **auth) -> dict:
    """Open `dev`, `eng` for group eng only; one IdP and no local login."""
    return {
        "auth": {
            "mode": "required",
            "local_login": False,
            "idps": [{"name": "corp", "display_name": "Corp SSO", "issuer": idp.issuer,
                      "client_id": IDP_CLIENT_ID, "client_secret": IDP_CLIENT_SECRET,
                      "scopes": ["openid", "email", "profile", "groups"], "groups_claim": groups_claim}],
            **auth,
        },
        "upstreams": [tiny_upstream("tiny", "auth-sso")],
        "virtual_servers": [
            {"name": "dev", "upstreams": [{"upstream": "tiny"}]},
            {"name": "eng", "upstreams": [{"upstream": "tiny"}], "access": {"groups": ["eng"]}},
        ],
    }


@contextmanager
def sso_stack(groups_claim: str = "groups", **auth) -> Iterator[Sso]:
    """An IdP whose client redirects to the gateway's /oauth/callback, and that gateway. The
    gateway port is chosen first: the IdP must know the callback URL before it starts."""
    port = free_port()
    callback = f"http://127.0.0.1:{port}/oauth/callback"
    clients = [{"client_id": IDP_CLIENT_ID, "client_secret": IDP_CLIENT_SECRET, "redirect_uris": [callback]}]
    with running_idp(clients, groups=GROUPS, groups_claim=groups_claim) as idp, \
            running_gateway(sso_config(idp, groups_claim=groups_claim, **auth), port=port) as gw:
        assert gw.base == f"http://127.0.0.1:{port}"
        yield Sso(gw, idp)
        assert gw.proc.poll() is None, f"the gateway exited early:\n{gw.log()}"


@pytest.fixture(scope="module")
def sso() -> Iterator[Sso]:
    with sso_stack() as s:
        yield s


@dataclass
class Outcome:
    """Where one browser flow ended."""
    final_url: str               # the client redirect URL (code or error)
    idp_request: dict[str, str]  # the gateway's authorization request at the IdP
    idp_callback: str            # the IdP's answer to the gateway (/oauth/callback?...)
    state: str
    verifier: str

    @property
    def query(self) -> dict[str, str]:
        return query_params(self.final_url)


def sso_flow(s: Sso, client: dict, redirect_uri: str, vs: str, login: str) -> Outcome:
    """The browser part: authorize, consent, IdP login, back through the gateway to the client."""
    verifier, state, url = authorization_url(s.gw.base, client["client_id"], redirect_uri, s.gw.url(vs))
    idp_origin = origin(s.idp.issuer)
    with Browser(idp=s.idp.issuer) as browser:
        to_idp = approve_consent(browser, url, stop=lambda u: origin(u) == idp_origin)
        assert to_idp.response is None, f"consent did not lead to the IdP: {to_idp.url}\n{s.gw.log()}"
        # One IdP and no local login: the gateway goes straight to it.
        assert [urllib.parse.urlsplit(h).path for h in to_idp.hops[:2]] == ["/oauth/consent", "/oauth/login/corp"], \
            to_idp.hops
        callback = browser.login_at_idp(to_idp.url, login)
        assert callback.startswith(f"{s.gw.base}/oauth/callback?"), callback
        done = browser.follow(callback, stop_at(redirect_uri))
        assert done.response is None, (
            f"the gateway did not send the browser back to the client: {done.url} "
            f"HTTP {done.response.status_code}: {done.response.text[:1000]}\n{s.gw.log()}")
    return Outcome(done.url, query_params(to_idp.url), callback, state, verifier)


def client_redirect() -> str:
    return f"http://127.0.0.1:{free_port()}/callback"


def test_full_flow_from_401_to_tool_call(sso: Sso) -> None:
    gw, idp = sso.gw, sso.idp
    vs_uri = gw.url("dev")

    # 1. The MCP request without a token: 401 pointing at the protected-resource metadata.
    challenge = unauthenticated_challenge(vs_uri)
    assert challenge == {"resource_metadata": f"{gw.base}/.well-known/oauth-protected-resource/mcp/dev",
                         "scope": "mcp"}, challenge

    # 2. PRM (RFC 9728) names the resource and the gateway as its authorization server.
    prm = httpx.get(challenge["resource_metadata"], timeout=10)
    assert prm.status_code == 200, prm.text
    assert prm.json()["resource"] == vs_uri and prm.json()["authorization_servers"] == [gw.base], prm.json()

    # 3. AS metadata (RFC 8414) at the issuer.
    meta = httpx.get(f"{gw.base}/.well-known/oauth-authorization-server", timeout=10).json()
    assert meta["issuer"] == gw.base
    assert meta["authorization_endpoint"] == f"{gw.base}/oauth/authorize"
    assert meta["token_endpoint"] == f"{gw.base}/oauth/token"
    assert meta["registration_endpoint"] == f"{gw.base}/oauth/register"
    assert meta["code_challenge_methods_supported"] == ["S256"]
    assert meta["authorization_response_iss_parameter_supported"] is True

    # 4. Dynamic registration with the defaults: a native confidential client.
    redirect_uri = client_redirect()
    client = register(gw.base, redirect_uri)
    assert client["token_endpoint_auth_method"] == "client_secret_basic" and client["client_secret"], client
    assert client["application_type"] == "native" and client["redirect_uris"] == [redirect_uri], client

    # 5. Browser: consent, the IdP, the callback, back to the client.
    out = sso_flow(sso, client, redirect_uri, "dev", "alice")
    idp_req = out.idp_request
    assert idp_req["client_id"] == IDP_CLIENT_ID
    assert idp_req["redirect_uri"] == f"{gw.base}/oauth/callback"
    assert idp_req["code_challenge_method"] == "S256" and idp_req["nonce"] and idp_req["state"], idp_req
    assert set(idp_req["scope"].split()) == {"openid", "email", "profile", "groups"}, idp_req
    # The gateway is its own client at the IdP: nothing of the MCP client's request leaks there.
    assert idp_req["state"] != out.state
    assert client["client_id"] not in json.dumps(idp_req) and redirect_uri not in json.dumps(idp_req), idp_req
    q = out.query
    assert set(q) == {"code", "state", "iss"}, q
    assert q["state"] == out.state and q["iss"] == gw.base, q
    idp_answer = query_params(out.idp_callback)
    idp_code = idp_answer["code"]
    assert q["code"] != idp_code, "the IdP's code was handed to the client"
    assert idp_code not in out.final_url and idp_answer["state"] not in out.final_url, out.final_url

    # 6. Token request with client_secret_basic, PKCE and the resource.
    r = exchange_code(gw.base, client, q["code"], out.verifier, redirect_uri, vs_uri)
    assert r.status_code == 200, f"{r.text}\n{gw.log()}"
    assert r.headers["content-type"].startswith("application/json") and r.headers["cache-control"] == "no-store"
    tokens = r.json()
    assert set(tokens) <= {"access_token", "token_type", "expires_in", "refresh_token", "scope"}, tokens
    assert tokens["token_type"] == "Bearer" and tokens["scope"] == "mcp", tokens
    access = tokens["access_token"]

    # 7. The access token is the gateway's: aud = the virtual server, iss = the gateway.
    claims, header = jwt_payload(access), jwt_header(access)
    assert claims["aud"] == vs_uri and claims["iss"] == gw.base, claims
    assert claims["client_id"] == client["client_id"] and claims["scope"] == "mcp", claims
    assert header["alg"] == "EdDSA" and header["typ"] == "at+jwt", header
    gw_kids = {k["kid"] for k in httpx.get(f"{gw.base}/oauth/jwks", timeout=10).json()["keys"]}
    idp_jwks = httpx.get(idp.metadata["jwks_uri"], timeout=10).json()["keys"]
    assert header["kid"] in gw_kids and header["kid"] not in {k.get("kid") for k in idp_jwks}, header

    # 8. Nothing the IdP issued reaches the client: no JWT from the IdP, no ID token, and the
    #    IdP's subject is not the gateway's.
    for jwt in jwts_in(tokens):
        assert jwt_payload(jwt)["iss"] != idp.issuer, f"an IdP token reached the client: {jwt_payload(jwt)}"
    assert "id_token" not in tokens and idp_code not in dump(tokens)
    assert claims["sub"] != "alice", "the token subject is the gateway's user id, not the IdP's sub"
    assert tokens["refresh_token"].startswith("pcr_"), tokens

    # 9. MCP with the token: initialize, tools/list, tools/call.
    assert echo_via(vs_uri, access, "hello through sso") == "hello through sso"

    # 10. The same token is not good for another virtual server (audience).
    other = mcp_initialize(gw.url("eng"), access)
    assert other.status_code == 401, other.text
    assert parse_challenge(other.headers["www-authenticate"]).get("error") == "invalid_token"


def test_idp_groups_decide_access(sso: Sso) -> None:
    """`eng` admits group eng: alice (eng at the IdP) gets in, bob (sales) is refused at the end
    of the flow with access_denied sent to the client."""
    gw = sso.gw
    redirect_uri = client_redirect()
    client = register(gw.base, redirect_uri, token_endpoint_auth_method="none")

    alice = sso_flow(sso, client, redirect_uri, "eng", "alice")
    assert set(alice.query) == {"code", "state", "iss"}, alice.final_url
    r = exchange_code(gw.base, client, alice.query["code"], alice.verifier, redirect_uri, gw.url("eng"))
    assert r.status_code == 200, r.text
    assert jwt_payload(r.json()["access_token"])["aud"] == gw.url("eng")
    assert echo_via(gw.url("eng"), r.json()["access_token"], "eng only") == "eng only"

    bob = sso_flow(sso, client, redirect_uri, "eng", "bob")
    q = bob.query
    assert q.get("error") == "access_denied" and "code" not in q, bob.final_url
    assert q["state"] == bob.state and q["iss"] == gw.base, q

    # bob may still use the open virtual server: the refusal is about the group, not the login.
    ok = sso_flow(sso, client, redirect_uri, "dev", "bob")
    assert "code" in ok.query, ok.final_url


def test_configurable_groups_claim() -> None:
    """The IdP sends groups in `roles`; with groups_claim: roles the gateway reads them there."""
    with sso_stack(groups_claim="roles") as s:
        redirect_uri = client_redirect()
        client = register(s.gw.base, redirect_uri, token_endpoint_auth_method="none")
        alice = sso_flow(s, client, redirect_uri, "eng", "alice")
        assert "code" in alice.query, f"alice (roles: eng) was refused: {alice.final_url}\n{s.gw.log()}"
        r = exchange_code(s.gw.base, client, alice.query["code"], alice.verifier, redirect_uri, s.gw.url("eng"))
        assert r.status_code == 200, r.text
        assert echo_via(s.gw.url("eng"), r.json()["access_token"], "roles") == "roles"
        bob = sso_flow(s, client, redirect_uri, "eng", "bob")
        assert bob.query.get("error") == "access_denied", bob.final_url


def test_groups_in_another_claim_are_not_read() -> None:
    """Negative control for the test above: the IdP sends `roles`, the gateway looks at the
    default `groups` claim, so alice has no groups and `eng` refuses her."""
    port = free_port()
    clients = [{"client_id": IDP_CLIENT_ID, "client_secret": IDP_CLIENT_SECRET,
                "redirect_uris": [f"http://127.0.0.1:{port}/oauth/callback"]}]
    with running_idp(clients, groups=GROUPS, groups_claim="roles") as idp, \
            running_gateway(sso_config(idp, groups_claim="groups"), port=port) as gw:
        redirect_uri = client_redirect()
        client = register(gw.base, redirect_uri, token_endpoint_auth_method="none")
        alice = sso_flow(Sso(gw, idp), client, redirect_uri, "eng", "alice")
        assert alice.query.get("error") == "access_denied", alice.final_url


def test_callback_is_bound_to_the_browser_that_consented(sso: Sso) -> None:
    """An attacker starts a request for their own client and approves the consent page, then
    makes the victim's browser log in at the IdP with the attacker's IdP URL. The IdP returns
    the victim to /oauth/callback; the victim's browser never saw the consent page and holds no
    pc_authz cookie for the request, so the gateway must not send a code for the victim's
    account to the attacker's redirect URI."""
    gw, idp = sso.gw, sso.idp
    redirect_uri = client_redirect()
    client = register(gw.base, redirect_uri, token_endpoint_auth_method="none")
    _, _, url = authorization_url(gw.base, client["client_id"], redirect_uri, gw.url("dev"))
    with Browser(idp=idp.issuer) as attacker:
        to_idp = approve_consent(attacker, url, stop=lambda u: origin(u) == origin(idp.issuer))
        assert to_idp.response is None, to_idp.url
    with Browser(idp=idp.issuer) as victim:
        callback = victim.login_at_idp(to_idp.url, "alice")
        assert callback.startswith(f"{gw.base}/oauth/callback?"), callback
        done = victim.follow(callback, stop_at(redirect_uri))
    assert not done.url.startswith(redirect_uri), (
        f"a code for the victim's account went to the attacker's client: {done.url}")
    assert done.response is not None and done.response.status_code == 403, done.url
    assert "did not start in this browser" in done.response.text


def test_idp_login_does_not_take_over_a_local_account() -> None:
    """A break-glass local administrator `root` exists (made with the CLI). Someone whose IdP
    preferred_username is also `root` signs in through the IdP: they must not become the local
    account (same user id in the token), and the local password must keep working."""
    with sso_stack(local_login=True) as s:
        gw, idp = s.gw, s.idp
        create_local_admin(gw, "root")
        redirect_uri = client_redirect()
        client = register(gw.base, redirect_uri, token_endpoint_auth_method="none")

        def local_sub() -> str | None:
            verifier, _, url = authorization_url(gw.base, client["client_id"], redirect_uri, gw.url("dev"))
            with Browser() as b:
                chooser = approve_consent(b, url, stop=stop_at(redirect_uri))
                links = [h for h in _links(chooser.response.text) if "/oauth/local?" in h]
                assert len(links) == 1, chooser.response.text
                form_page = b.follow(urllib.parse.urljoin(gw.base, links[0]))
                final = local_login(b, form_page, "root", LOCAL_PASSWORD, redirect_uri) \
                    if form_page.response.status_code == 200 else None
            if final is None or "code" not in query_params(final):
                return None
            r = exchange_code(gw.base, client, query_params(final)["code"], verifier, redirect_uri, gw.url("dev"))
            assert r.status_code == 200, r.text
            return jwt_payload(r.json()["access_token"])["sub"]

        root_id = local_sub()
        assert root_id, "the local administrator could not sign in"

        # The IdP user `root` (sub and preferred_username "root").
        verifier, _, url = authorization_url(gw.base, client["client_id"], redirect_uri, gw.url("dev"))
        with Browser(idp=idp.issuer) as b:
            chooser = approve_consent(b, url, stop=stop_at(redirect_uri))
            links = [h for h in _links(chooser.response.text) if "/oauth/login/corp?" in h]
            assert len(links) == 1, chooser.response.text
            callback = b.login_at_idp(urllib.parse.urljoin(gw.base, links[0]), "root")
            done = b.follow(callback, stop_at(redirect_uri))
        q = query_params(done.url)
        if "code" in q:
            r = exchange_code(gw.base, client, q["code"], verifier, redirect_uri, gw.url("dev"))
            assert r.status_code == 200, r.text
            assert jwt_payload(r.json()["access_token"])["sub"] != root_id, \
                "the IdP user `root` was given the local administrator's account"
        assert local_sub() == root_id, "the local administrator can no longer sign in with the password"


def _links(page: str) -> list[str]:
    """The href targets of a page (the gateway's sign-in chooser)."""
    return [html.unescape(x) for x in re.findall(r'href="([^"]+)"', page)]


# --------------------------------------------------------------------------------------
# Client ID Metadata Documents
# --------------------------------------------------------------------------------------

class _DocServer:
    """A loopback HTTP server answering GET /client.json with a client metadata document."""

    def __init__(self, doc_for: callable):
        self.requests: list[str] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                outer.requests.append(self.path)
                if self.path != "/client.json":
                    self.send_error(404)
                    return
                body = json.dumps(doc_for(outer.url)).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/client.json"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> _DocServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)


def cimd_config(allow_insecure_loopback: bool) -> dict:
    return {
        "auth": {"mode": "required", "local_login": True,
                 "cimd": {"enabled": True, "allow_insecure_loopback": allow_insecure_loopback}},
        "upstreams": [tiny_upstream("tiny", "auth-cimd")],
        "virtual_servers": [{"name": "dev", "upstreams": [{"upstream": "tiny"}]}],
    }


def test_cimd_client_with_local_login() -> None:
    redirect_uri = client_redirect()

    def doc(url: str) -> dict:
        return {"client_id": url, "client_name": "CIMD e2e client", "redirect_uris": [redirect_uri],
                "grant_types": ["authorization_code", "refresh_token"], "response_types": ["code"],
                "token_endpoint_auth_method": "none"}

    with _DocServer(doc) as docs, running_gateway(cimd_config(True)) as gw:
        create_local_admin(gw, "carol")
        meta = httpx.get(f"{gw.base}/.well-known/oauth-authorization-server", timeout=10).json()
        assert meta["client_id_metadata_document_supported"] is True, meta
        client = {"client_id": docs.url, "token_endpoint_auth_method": "none"}  # no registration
        verifier, state, url = authorization_url(gw.base, docs.url, redirect_uri, gw.url("dev"))
        with Browser() as b:
            page = b.follow(url)
            form = consent_form(page)
            assert "CIMD e2e client" in page.response.text and "metadata document" in page.response.text, \
                page.response.text
            assert docs.requests == ["/client.json"], docs.requests
            login_page = b.submit(form, button="approve", stop=stop_at(redirect_uri))
            final = local_login(b, login_page, "carol", LOCAL_PASSWORD, redirect_uri)
        q = query_params(final)
        assert set(q) == {"code", "state", "iss"} and q["state"] == state and q["iss"] == gw.base, final
        r = exchange_code(gw.base, client, q["code"], verifier, redirect_uri, gw.url("dev"))
        assert r.status_code == 200, f"{r.text}\n{gw.log()}"
        access = r.json()["access_token"]
        claims = jwt_payload(access)
        assert claims["client_id"] == docs.url and claims["aud"] == gw.url("dev"), claims
        assert echo_via(gw.url("dev"), access, "cimd") == "cimd"
        # A redirect URI the document does not list is refused on the gateway's own page.
        _, _, bad = authorization_url(gw.base, docs.url, client_redirect(), gw.url("dev"))
        r = httpx.get(bad, timeout=10)
        assert r.status_code == 400 and "location" not in r.headers, r.text


def test_cimd_over_http_needs_allow_insecure_loopback() -> None:
    """The same http://127.0.0.1 document is refused (never fetched) without the dev switch."""
    redirect_uri = client_redirect()

    def doc(url: str) -> dict:
        return {"client_id": url, "client_name": "CIMD e2e client", "redirect_uris": [redirect_uri]}

    with _DocServer(doc) as docs, running_gateway(cimd_config(False)) as gw:
        _, _, url = authorization_url(gw.base, docs.url, redirect_uri, gw.url("dev"))
        r = httpx.get(url, timeout=10)
        assert r.status_code == 400 and "location" not in r.headers, r.text
        assert "metadata document" in r.text, r.text
        assert docs.requests == [], docs.requests
