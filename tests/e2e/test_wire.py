"""Messages that cannot be read, answered all the same: cut short, not UTF-8, lone surrogates,
not JSON-RPC, over the size limit. The SDK drops what it cannot parse without a word, and the
client waits for its own timeout; ``stdio`` answers each request that has an id, with an error
(to id null when the id cannot be read), and never stops serving.

Raw bytes are written to a real server's stdin (``wire``): SDK clients cannot send these.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from mcp_background_job.stdio import MAX_MESSAGE_BYTES

from .wire import WireServer, wire_server

PARSE_ERROR, INVALID_REQUEST, INVALID_PARAMS = -32700, -32600, -32602


@pytest.fixture(scope="module")
def wire(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WireServer]:
    with wire_server(tmp_path_factory.mktemp("wire") / "jobs.db") as server:
        yield server


# --- messages that cannot be read ----------------------------------------------------------

_REQ = '{"jsonrpc":"2.0","id":%s,"method":"tools/call","params":{"name":"list","arguments":{}}}'


@pytest.mark.parametrize(
    ("raw", "code", "answer_id", "says"),
    [
        pytest.param(
            b'{"jsonrpc":"2.0","id":41,"method":"tools/call","params":{"name":"execute","argu',
            PARSE_ERROR, 41, "not valid JSON", id="cut-short-id-first",
        ),
        pytest.param(
            b'{"method":"tools/call","params":{"name":"list","argum',
            PARSE_ERROR, None, "not valid JSON", id="cut-short-no-id",
        ),
        pytest.param(b"hello\n", PARSE_ERROR, None, "not valid JSON", id="not-json"),
        pytest.param(
            b'{"jsonrpc":"2.0","id":42,"method":"ping","x":"\xff\xfe"}',
            PARSE_ERROR, 42, "not valid UTF-8", id="not-utf8",
        ),
        pytest.param(
            b'{"jsonrpc":"2.0","id":43,"method":"tools/call","params":{"name":"execute",'
            b'"arguments":{"command":"echo \\ud800"}}}',
            INVALID_PARAMS, 43, "params.arguments.command contains a lone UTF-16 surrogate",
            id="lone-surrogate",
        ),
        pytest.param(
            b'{"method":"tools/call","params":{"name":"status","arguments":{"job_id":"\\udfff"}},'
            b'"jsonrpc":"2.0","id":"s-44"}',
            INVALID_PARAMS, "s-44", "lone UTF-16 surrogate", id="lone-surrogate-id-last",
        ),
        pytest.param(
            b'{"jsonrpc":"2.0","id":45,"method":"ping\\ud83d"}',
            INVALID_REQUEST, 45, "method contains a lone", id="lone-surrogate-in-method",
        ),
        pytest.param(
            b'[{"jsonrpc":"2.0","id":46,"method":"ping"}]',
            INVALID_REQUEST, None, "batches are not supported", id="batch",
        ),
        pytest.param(
            b'{"jsonrpc":"2.0","id":47}', INVALID_REQUEST, 47, 'no "method"', id="no-method"
        ),
        pytest.param(
            b'{"jsonrpc":"1.0","id":48,"method":"ping"}', INVALID_REQUEST, 48, '"2.0"', id="version"
        ),
        pytest.param(
            b'{"jsonrpc":"2.0","id":49,"method":"ping","params":[1]}',
            INVALID_REQUEST, 49, "params", id="params-not-object",
        ),
        pytest.param(
            b'{"jsonrpc":"2.0","id":1.5,"method":"ping"}',
            INVALID_REQUEST, 1.5, "not a string or an integer", id="fractional-id",
        ),
        pytest.param(
            b'{"jsonrpc":"2.0","id":true,"method":"ping"}',
            INVALID_REQUEST, None, "not a string or an integer", id="boolean-id",
        ),
        pytest.param(
            b'{"jsonrpc":"2.0","id":50,"method":"ping","params":' + b"[" * 100_000,
            PARSE_ERROR, 50, "", id="deeply-nested",
        ),
    ],
)  # fmt: skip
def test_a_message_that_cannot_be_read_is_answered(
    wire: WireServer, raw: bytes, code: int, answer_id: object, says: str
) -> None:
    wire.send(raw + b"\n")
    reply = wire.reply_to(answer_id)
    assert reply["error"]["code"] == code, reply
    assert says in reply["error"]["message"], reply
    assert wire.alive()


def test_a_broken_notification_is_not_answered(wire: WireServer) -> None:
    wire.send(b'{"jsonrpc":"2.0","method":"notifications/cancelled","params":{"x":"\\ud800"}}\n')
    wire.send(b"\n\n   \n")  # blank lines are no messages either
    ping = wire.request("ping")
    assert ping["result"] == {}  # and nothing else came before the ping's answer
    assert wire.read_message(timeout=0.3) is None


@pytest.mark.parametrize("where", ["start", "end", "nowhere"])
def test_an_oversized_message_is_skipped_and_answered(wire: WireServer, where: str) -> None:
    """Over the limit, the message is skipped without being kept in memory; its id is read where
    clients write it: first (the Python SDK) or last (the TypeScript SDK)."""
    filler = "x" * (MAX_MESSAGE_BYTES + 1000)
    args = '{"name":"interact","arguments":{"job_id":"0","input":"' + filler + '"}}'
    msg_id: int | str | None
    if where == "start":
        raw, msg_id = '{"jsonrpc":"2.0","id":61,"method":"tools/call","params":' + args + "}", 61
    elif where == "end":
        raw = '{"method":"tools/call","params":' + args + ',"jsonrpc":"2.0","id":"t-62"}'
        msg_id = "t-62"
    else:
        raw, msg_id = '{"method":"tools/call","params":' + args + ',"jsonrpc":"2.0"', None
    started = time.monotonic()
    wire.send(raw.encode() + b"\n")
    reply = wire.reply_to(msg_id)
    assert reply["error"]["code"] == INVALID_REQUEST
    message = reply["error"]["message"]
    assert f"over this server's limit of {MAX_MESSAGE_BYTES} bytes" in message
    assert "interact input at most 1 MiB" in message
    assert time.monotonic() - started < 20
    # a message just under the limit is still read (and refused by the tool, for its size)
    assert wire.alive()
