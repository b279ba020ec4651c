"""Secret redaction (every rule, secrets split at every byte, windows with context) and the
stripping of terminal control sequences."""

from __future__ import annotations

import random
import time

import pytest

from mcp_background_job.redact import CONTEXT_BYTES, Redactor, strip_controls

R = Redactor()

PEM_BODY = "MIIEowIBAAKCAQEA1b2c3d4e5f6g7h8i9j0\nk1l2m3n4o5p6q7r8s9t0u1v2w3x4y5z6\n"
SAMPLES: list[tuple[str, str, str]] = [
    # (rule, text, the secret that must not survive)
    ("aws-access-key", "id AKIAIOSFODNN7EXAMPLE ok", "IOSFODNN7EXAMPLE"),
    ("aws-secret-key", "aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
     "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"),
    ("github-token", "GH ghp_1234567890abcdefghijABCDEFGHIJ123456 x",
     "1234567890abcdefghijABCDEFGHIJ123456"),
    ("github-fine-grained-token", "github_pat_11ABCDEFG0123456789_abcdefghijklmnop",
     "11ABCDEFG0123456789_abcdefghijklmnop"),
    ("gitlab-token", "glpat-xxxxYYYYzzzz11112222 end", "xxxxYYYYzzzz11112222"),
    ("slack-token", "xoxb-123456789012-1234567890123-AbCdEfGh", "123456789012-1234567890123"),
    ("slack-webhook", "https://hooks.slack.com/services/T000/B000/XXXXXXXXXXXXXXXXXXXXXXXX",
     "XXXXXXXXXXXXXXXXXXXXXXXX"),
    ("stripe-key", "sk_live_4eC39HqLyjWDarjtT1zdp7dc", "4eC39HqLyjWDarjtT1zdp7dc"),
    ("openai-style-key", "OPENAI sk-proj-abcdefghijklmnopqrstuvwxyz012345", "abcdefghijklmnopqrstuvwxyz"),
    ("openai-style-key", "key sk-ant-api03-abcdefghijklmnopqrstuvwxyz", "abcdefghijklmnopqrstuvwxyz"),
    ("google-api-key", "AIzaSyA1234567890abcdefghijklmnopqrstuv", "SyA1234567890abcdefghijklmnopqrstuv"),
    ("npm-token", "npm_abcdefghijklmnopqrstuvwxyz0123456789", "abcdefghijklmnopqrstuvwxyz0123456789"),
    ("huggingface-token", "hf_abcdefghijklmnopqrstuvwxyzABCDEFGH", "abcdefghijklmnopqrstuvwxyzABCDEFGH"),
    ("jwt", "Bearer-less eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N",
     "eyJzdWIiOiIxMjM0NTY3ODkwIn0"),
    ("url-credentials", "cloning https://deploy:s3cr3tPassw0rd@git.example.com/r.git",
     "s3cr3tPassw0rd"),
    ("url-credentials", "DATABASE_URL=postgres://app:hunter22@db:5432/app", "hunter22"),
    ("authorization-header", "> Authorization: Bearer abc.def-ghi_jkl", "abc.def-ghi_jkl"),
    ("secret-assignment", "password=hunter22 next", "hunter22"),
    ("secret-assignment", "export API_KEY='abcd1234efgh'", "abcd1234efgh"),
    ("secret-assignment", "client_secret: zzTopSecretValue", "zzTopSecretValue"),
    ("secret-assignment", '{"token": "tok_abcdef12345"}', "tok_abcdef12345"),
    ("private-key",
     f"-----BEGIN RSA PRIVATE KEY-----\n{PEM_BODY}-----END RSA PRIVATE KEY-----\n", "k1l2m3n4o5"),
    ("private-key", f"-----BEGIN OPENSSH PRIVATE KEY-----\n{PEM_BODY}", "k1l2m3n4o5"),
]  # fmt: skip


@pytest.mark.parametrize(("rule", "text", "secret"), SAMPLES, ids=[s[0] for s in SAMPLES])
def test_each_rule_masks_its_secret_and_keeps_the_length(rule: str, text: str, secret: str) -> None:
    out, hits = R.redact(text.encode())
    assert secret.encode() not in out
    assert len(out) == len(text.encode())
    assert hits[rule] >= 1
    assert b"*" * 8 in out


@pytest.mark.parametrize(
    "text",
    [
        "make[1]: Entering directory '/home/dev/proj'",
        "tokens: 1234 used",
        "[ 42%] Building CXX object src/CMakeFiles/core.dir/parser.cpp.o",
        "PASSED tests/test_auth.py::test_login_with_password",
        "Downloading https://files.pythonhosted.org/packages/ab/cd/pkg-1.0.tar.gz",
        "password: ",
        "git@github.com:org/repo.git",
        "sha256:3f786850e387550fdab836ed7e6dc881de23001b",
    ],
)
def test_ordinary_output_is_left_alone(text: str) -> None:
    out, hits = R.redact(text.encode())
    assert out == text.encode()
    assert not hits


def test_known_values_are_masked_exactly() -> None:
    r = R.with_values([b"my-own-secret-value"])
    out, hits = r.redact(b"value is my-own-secret-value; ok")
    assert b"my-own-secret-value" not in out
    assert hits["known-secret"] == 1


def _stream_reads(data: bytes, split: int) -> bytes:
    """What a client reads: a first read while only ``data[:split]`` exists (a running job's
    live end), then reads from the returned cursor once everything exists and the job ended."""
    first = R.window(data[:split], 0, split, live=True, final=False)
    cursor = first.end
    rest = R.window(data, cursor, len(data), live=False, final=True)
    return first.data + rest.data


@pytest.mark.parametrize(("rule", "text", "secret"), SAMPLES, ids=[s[0] for s in SAMPLES])
def test_secret_split_at_any_byte_is_still_masked(rule: str, text: str, secret: str) -> None:
    data = ("some output before\n" + text + "\nafter\n").encode()
    whole, _ = R.redact(data)
    for split in range(1, len(data)):
        got = _stream_reads(data, split)
        assert got == whole, f"split at {split}: {got!r}"


def test_windows_with_context_equal_redacting_everything() -> None:
    rnd = random.Random(7)
    secrets = [s[1].encode() for s in SAMPLES]
    parts = []
    for i in range(3000):
        parts.append(f"line {i}: compiling module_{i}.c\n".encode())
        if rnd.random() < 0.05:
            parts.append(rnd.choice(secrets) + b"\n")
    data = b"".join(parts)
    whole, _ = R.redact(data)
    out = bytearray()
    pos = 0
    window = 997  # not a multiple of anything
    while pos < len(data):
        lo = max(0, pos - CONTEXT_BYTES)
        hi = min(len(data), pos + window + CONTEXT_BYTES)
        r = R.window(data[lo:hi], pos - lo, min(pos + window, len(data)) - lo, live=False,
                     final=hi == len(data))  # fmt: skip
        assert r.end > pos - lo, "no progress"
        out += r.data
        pos = lo + r.end
    assert bytes(out) == whole


def test_live_end_holds_back_an_incomplete_secret_but_not_a_prompt() -> None:
    held = R.window(b"ok\nkey=AKIAIOSF", 0, 15, live=True, final=False)
    assert held.data == b"ok\n"  # the trailing AKIA... word waits for the rest
    prompt = R.window(b"Enter your name: ", 0, 17, live=True, final=False)
    assert prompt.data == b"Enter your name: "
    repl = R.window(b">>> ", 0, 4, live=True, final=False)
    assert repl.data == b">>> "
    assert R.window(b"password: hun", 0, 13, live=True, final=False).data == b""
    for waiting in (b"[sudo] password for dev: ", b"Enter API token: ", b"Password: "):
        shown = R.window(waiting, 0, len(waiting), live=True, final=False)
        assert shown.data == waiting  # a prompt waiting for input is shown at once


def test_unterminated_private_key_is_masked_to_the_end() -> None:
    data = b"-----BEGIN PRIVATE KEY-----\nAAAABBBBCCCC\nDDDD"
    out, _ = R.redact(data)
    assert b"AAAA" not in out and b"DDDD" not in out


# --- terminal control sequences ------------------------------------------------------------------


def test_osc52_clipboard_write_is_stripped() -> None:
    text = "before\x1b]52;c;cm0gLXJmIC8K\x07after"
    assert strip_controls(text) == "beforeafter"
    assert strip_controls("x\x1b]52;c;cm0gLXJmIC8K\x1b\\y") == "xy"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("\x1b[31mred\x1b[0m", "red"),
        ("\x1b]0;evil title\x07ok", "ok"),
        ("\x1b[2J\x1b[Hclear", "clear"),
        ("\x9b31mc1 csi", "c1 csi"),
        ("\x9d52;c;abc\x9cend", "end"),
        ("cut \x1b]52;c;SGVsbG", "cut "),  # unterminated at the end of a read
        ("bell\x07 nul\x00 del\x7f", "bell nul del"),
        ("tab\tnewline\ncr\r", "tab\tnewline\ncr\r"),
        ("\x1bPq#0;2;0;0;0\x1b\\sixel", "sixel"),
        ("ünïcødé ✓", "ünïcødé ✓"),
    ],
)
def test_control_sequences_are_stripped(text: str, expected: str) -> None:
    assert strip_controls(text) == expected
    assert "\x1b" not in strip_controls(text + "\x1b")


@pytest.mark.slow
def test_throughput_on_100mb_of_build_log() -> None:
    """Measured, not asserted (no timing assertions on shared machines): see the report."""
    rnd = random.Random(1)
    templates = [
        "gcc -O2 -Wall -c src/module_{i}.c -o build/module_{i}.o\n",
        "[ 42%] Building CXX object src/CMakeFiles/core.dir/file_{i}.cpp.o\n",
        "PASSED tests/test_mod.py::test_case_{i}\n",
        "npm WARN deprecated package@{i}.0.0: use something else\n",
        "make[2]: Entering directory '/home/u/proj/sub{i}'\n",
        "  Downloading https://files.example.org/pkg-{i}.tar.gz (1.2 MB)\n",
    ]
    lines = [rnd.choice(templates).format(i=i).encode() for i in range(50_000)]
    block = b"".join(lines)
    data = block * (100 * 1024 * 1024 // len(block) + 1)
    data = data[: 100 * 1024 * 1024]
    start = time.perf_counter()
    out, hits = R.redact(data)
    seconds = time.perf_counter() - start
    assert len(out) == len(data)
    print(
        f"\nredactor: {len(data) / seconds / 1e6:.0f} MB/s on 100 MB of build log ({sum(hits.values())} hits)"
    )
