"""MCP at `/mcp`, driven by the official MCP Python SDK (`mcp`).

What an agent sees when it points an MCP client at infergate: the tools its key may call, each
answering like the HTTP route it stands for, and the host's refusals as tool errors.

Environment (set by tests/e2e/mcp.rs, which starts a host and runs this file):
  INFERGATE_URL         the host
  INFERGATE_API_KEY     a key that may call everything
  INFERGATE_SCOPED_KEY  a key scoped to the digits plugin only
  INFERGATE_SMALL_KEY   a key whose tenant may make 2 requests a minute
"""

import json
import os
import urllib.error
import urllib.request

import anyio
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client

URL = os.environ.get("INFERGATE_URL", "").rstrip("/")
if not URL:
    pytest.skip("INFERGATE_URL is not set", allow_module_level=True)
KEY = os.environ["INFERGATE_API_KEY"]
PIXELS = [0, 0, 5, 13, 9, 1, 0, 0, 0, 0, 13, 15, 10, 15, 5, 0, 0, 3, 15, 2, 0, 11, 8, 0, 0, 4, 12,
          0, 0, 8, 8, 0, 0, 5, 8, 0, 0, 9, 8, 0, 0, 4, 11, 0, 1, 12, 7, 0, 0, 2, 14, 5, 10, 12, 0,
          0, 0, 0, 6, 13, 10, 0, 0, 0]


def client(key):
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    transport = streamable_http_client(URL + "/mcp", http_client=create_mcp_http_client(headers=headers))
    return Client(transport, mode="legacy")


def run(fn):
    return anyio.run(fn)


def http_classify():
    request = urllib.request.Request(
        URL + "/digits/classify",
        data=json.dumps({"pixels": PIXELS}).encode(),
        headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as r:
        return json.load(r)


def test_the_tools_are_the_routes_and_a_call_answers_like_http():
    async def main():
        async with client(KEY) as c:
            tools = {t.name: t for t in (await c.list_tools()).tools}
            result = await c.call_tool("digits_classify", {"pixels": PIXELS})
            return tools, result

    tools, result = run(main)
    assert {"digits_classify", "embed_embeddings", "hello_greet"} <= set(tools), sorted(tools)
    digits = tools["digits_classify"]
    assert digits.description
    assert "pixels" in json.dumps(digits.input_schema)
    assert digits.output_schema and "digit" in json.dumps(digits.output_schema)
    assert not result.is_error, result
    assert result.structured_content == http_classify()
    assert json.loads(result.content[0].text) == result.structured_content


def test_bad_arguments_are_a_tool_error_with_the_products_code():
    async def main():
        async with client(KEY) as c:
            return await c.call_tool("digits_classify", {"pixels": "nope"})

    result = run(main)
    assert result.is_error
    error = json.loads(result.content[0].text)["error"]
    assert error["code"] == "invalid_request", error


def test_an_unauthorised_caller_gets_no_tools():
    async def main():
        async with client("not-a-key-0123456789") as c:
            return await c.list_tools()

    # The client cannot even start: the host answers 401 before any JSON-RPC, which the SDK
    # reports as an error response.
    with pytest.raises(BaseException) as e:
        run(main)
    assert "error response" in repr(e.value) or "401" in repr(e.value), repr(e.value)
    request = urllib.request.Request(
        URL + "/mcp",
        data=json.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/list"}).encode(),
        headers={"Authorization": "Bearer not-a-key-0123456789", "Content-Type": "application/json"},
    )
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(request, timeout=30)
    assert e.value.code == 401


def test_a_scoped_key_sees_only_its_tools():
    async def main():
        async with client(os.environ["INFERGATE_SCOPED_KEY"]) as c:
            names = [t.name for t in (await c.list_tools()).tools]
            hello = await c.call_tool("hello_greet", {"name": "Ada"}) if "hello_greet" in names else None
            return names, hello

    names, hello = run(main)
    assert names == ["digits_classify"], names


def test_a_tool_call_over_quota_is_refused():
    async def main():
        async with client(os.environ["INFERGATE_SMALL_KEY"]) as c:
            return [await c.call_tool("digits_classify", {"pixels": PIXELS}) for _ in range(3)]

    results = run(main)
    assert not results[0].is_error and not results[1].is_error
    assert results[2].is_error
    error = json.loads(results[2].content[0].text)["error"]
    assert error["code"] == "rate_limited", error
