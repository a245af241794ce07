"""The real MCP client (PyPI mcp 2.3.0, its OAuthClientProvider) signs in to the gateway by
itself: 401 -> protected-resource metadata -> AS metadata -> dynamic registration ->
authorization (the test drives the consent page and the local password form) -> token,
then lists and calls tools. The local administrator is created with the CLI while the
gateway runs."""

from __future__ import annotations

import urllib.parse
from collections.abc import Iterator

import anyio
import pytest
from auth_flow import LOCAL_PASSWORD, approve_consent, create_local_admin, local_login, stop_at
from e2e_util import tiny_upstream
from gateway import Gateway, running_gateway
from idp import Browser, jwt_payload, query_params
from mcp_oauth import OAuthFlowError, connect_with_oauth

pytestmark = pytest.mark.anyio

MODES = ["legacy", "auto"]
USER = "mcp-admin"
TIMEOUT = 120  # guard against hangs only


@pytest.fixture(scope="module")
def gw() -> Iterator[Gateway]:
    config = {
        "auth": {"mode": "required", "local_login": True},
        "upstreams": [tiny_upstream("tiny", "auth-mcp-client")],
        "virtual_servers": [{"name": "dev", "upstreams": [{"upstream": "tiny"}]}],
    }
    with running_gateway(config) as g:
        create_local_admin(g, USER)
        yield g
        assert g.proc.poll() is None, f"the gateway exited early:\n{g.log()}"


def drive_local_login(username: str, password: str = LOCAL_PASSWORD, decision: str = "approve"):
    """drive_login for connect_with_oauth: consent, then the gateway's local password form."""

    def drive(url: str) -> str:
        redirect_uri = query_params(url)["redirect_uri"]
        with Browser() as b:
            landing = approve_consent(b, url, stop=stop_at(redirect_uri), decision=decision)
            if landing.response is None:  # denied: straight back to the client
                return landing.url
            return local_login(b, landing, username, password, redirect_uri)

    return drive


@pytest.mark.parametrize("mode", MODES)
async def test_mcp_client_signs_in_and_calls_tools(gw: Gateway, mode: str) -> None:
    url = gw.url("dev")
    with anyio.fail_after(TIMEOUT):
        async with connect_with_oauth(url, drive_local_login(USER), mode=mode) as conn:
            tools = {t.name for t in (await conn.client.list_tools()).tools}
            assert {"tiny_echo", "tiny_pid"} <= tools, tools
            result = await conn.client.call_tool("tiny_echo", {"text": f"hello {mode}"})
            assert result.content[0].text == f"hello {mode}", result
            assert not result.is_error

    # Exactly one browser round trip, and what the SDK sent and got is what the gateway promises.
    assert len(conn.auth_urls) == 1, conn.auth_urls
    req = query_params(conn.auth_urls[0])
    assert conn.auth_urls[0].startswith(f"{gw.base}/oauth/authorize?"), conn.auth_urls[0]
    assert req["resource"] == url and req["scope"] == "mcp" and req["code_challenge_method"] == "S256", req
    final = query_params(conn.final_urls[0])
    assert final["iss"] == gw.base and final["state"] == req["state"], final
    info = conn.storage.client_info
    assert info is not None and info.client_id.startswith("pc-"), info
    assert info.token_endpoint_auth_method == "client_secret_basic" and info.client_secret, info
    claims = jwt_payload(conn.access_token)
    assert claims["aud"] == url and claims["iss"] == gw.base and claims["client_id"] == info.client_id, claims
    assert conn.storage.tokens.refresh_token.startswith("pcr_")


async def test_mcp_client_sees_a_denied_consent(gw: Gateway) -> None:
    """Pressing Deny sends error=access_denied to the client, which gives up (OAuthFlowError)."""
    with anyio.fail_after(TIMEOUT), pytest.raises(OAuthFlowError, match="access_denied"):
        async with connect_with_oauth(gw.url("dev"), drive_local_login(USER, decision="deny"), mode="legacy") as conn:
            await conn.client.list_tools()


async def test_mcp_client_with_a_wrong_password_gets_no_token(gw: Gateway) -> None:
    """A wrong password keeps the browser on the login form; no code reaches the client."""
    seen: list[int] = []

    def drive(url: str) -> str:
        redirect_uri = query_params(url)["redirect_uri"]
        with Browser() as b:
            landing = approve_consent(b, url, stop=stop_at(redirect_uri))
            form = [f for f in landing.forms if f.action.endswith("/oauth/local")][0]
            again = b.submit(form, {"username": USER, "password": LOCAL_PASSWORD + "-wrong"}, stop=stop_at(redirect_uri))
            assert again.response is not None, again.url
            seen.append(again.response.status_code)
            return urllib.parse.urljoin(redirect_uri, "?error=access_denied&error_description=gave+up")

    with anyio.fail_after(TIMEOUT), pytest.raises(OAuthFlowError):
        async with connect_with_oauth(gw.url("dev"), drive, mode="legacy") as conn:
            await conn.client.list_tools()
    assert seen == [401], seen
