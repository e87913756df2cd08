"""Fuzz the command line: random URLs (every scheme, malformed ones, random query options and
values, passwords in the user info and in password-like options) and random option values,
driven through typer's CliRunner.

Whatever the input: no traceback (no exception escapes a command), an exit code of 1 or 2
(the commands run against a topic or group that does not exist, so none can succeed; doctor
may: 0), every error is one ``error:`` line (or click's usage text), and no password from the
URL appears in any output.

Hosts are never random (a DNS look-up or an unreachable host would make an example take
seconds): URLs point at the test servers (``{REDIS}`` / ``{KAFKA}`` below, filled in from the
fixtures), at a refused loopback port where nothing connects, or are malformed.
"""

from __future__ import annotations

import os
import uuid
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from eventbus.cli import app

PASSWORD = "Fz-q7Lx2-secret"
MISSING = f"fuzz-missing-{uuid.uuid4().hex[:8]}"
_SOAK = int(os.environ.get("EVENTBUS_CLI_FUZZ_EXAMPLES", "0"))
"""Set it (for example to 2000) to explore with random examples instead of the fixed set."""
FUZZ = settings(
    max_examples=_SOAK or 80,
    deadline=None,
    derandomize=not _SOAK,  # a green build stays green; the examples are the same every run
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)

# option names: each transport's valid ones, the other transport's, near misses, junk
OPTION_NAMES = st.sampled_from(
    [
        "socket_timeout", "socket_connect_timeout", "max_connections", "poll_interval",
        "metadata_ttl", "discover_streams", "cluster", "health_check_interval", "client_name",
        "protocol", "ssl_cert_reqs", "db", "redis_options", "connect_timeout", "client_id",
        "linger_ms", "config", "bogus", "", "retry", "host", "source", "target",
        "secondary_timeout",
    ]
)  # fmt: skip
OPTION_VALUES = st.one_of(
    st.sampled_from(
        [
            "0",
            "-1",
            "1",
            "0.2",
            "3",
            "nan",
            "inf",
            "-inf",
            "1e400",
            "true",
            "no",
            "maybe",
            "",
            "%",
            "required",
        ]
    ),
    st.text(max_size=8),
)


@st.composite
def urls(draw: st.DrawFn) -> str:
    """A URL of any shape; with a password in it about half the time."""
    shape = draw(st.sampled_from(["memory", "redis", "kafka", "migrate", "unknown", "malformed"]))
    secret = draw(st.booleans())
    userinfo = f"user:{PASSWORD}@" if secret else ""
    options = draw(st.lists(st.tuples(OPTION_NAMES, OPTION_VALUES), max_size=3))
    if draw(st.booleans()):
        options.append((draw(st.sampled_from(["password", "sasl_password"])), PASSWORD))
    if shape == "kafka":  # a slow TLS/SASL negotiation is not what this test is about
        options.append(("connect_timeout", "1"))
    query = "&".join(f"{quote(k)}={quote(v)}" for k, v in options)
    if shape == "memory":
        return f"memory://fuzz-{draw(st.text(alphabet='abc-', max_size=5))}?{query}"
    if shape == "redis":
        return f"redis://{userinfo}{{REDIS}}/0?{query}"
    if shape == "kafka":
        return f"kafka://{userinfo}{{KAFKA}}?{query}"
    if shape == "migrate":
        inner = quote(f"redis://{userinfo}{{REDIS}}/0", safe="")
        return f"migrate://m?source={inner}&target=memory://x&{query}"
    if shape == "unknown":
        scheme = draw(st.sampled_from(["redsi", "kafak", "http", "x"]))
        return f"{scheme}://{userinfo}127.0.0.1:1?{query}"
    template = draw(
        st.sampled_from(
            [
                "redis://{u}127.0.0.1:notaport/0",
                "redis://{u}127.0.0.1:99999/0",
                "redis://{u}h1:1,h2:2/0",
                "redis://{u}127.0.0.1:1/x",
                "kafka://{u}",
                "kafka://{u}h:1,:2",
                "redis:/{u}127.0.0.1:1/0",
                "{u}127.0.0.1:6379",
                "redis://][{u}127.0.0.1:1/0",
                "redis://user:a#{p}@127.0.0.1:1/0",
                "",
                "   ",
            ]
        )
    )
    return template.format(u=userinfo, p=PASSWORD)


def commands(url: str) -> st.SearchStrategy[list[str]]:
    texts = st.text(max_size=12)
    durations = st.one_of(st.sampled_from(["10m", "7d", "0s", "99999999999d", "forever"]), texts)
    starts = st.one_of(st.sampled_from(["earliest", "latest", "0:0", "9:x", "2026-01-31"]), texts)
    return st.one_of(
        st.just(["topics", "describe", MISSING]),
        st.builds(lambda d: ["produce", MISSING, "--data", d], texts),
        st.builds(lambda h: ["produce", MISSING, "-H", h, "--data", "1"], texts),
        st.builds(lambda s: ["tail", MISSING, "--since", s], durations),
        st.builds(lambda s: ["tail", MISSING, "--from", s, "-n", "1"], starts),
        st.builds(lambda s: ["groups", "reset", "g", "-t", MISSING, "--to", s, "--yes"], starts),
        st.just(["groups", "describe", MISSING]),
        st.builds(
            lambda r, b, c: [
                "topics",
                "create",
                "bad name!",
                "--retention",
                r,
                "--retention-bytes",
                b,
                "-c",
                c,
            ],
            durations,
            st.one_of(st.sampled_from(["1GB", "1GiB", "0", "-1", "lots"]), texts),
            texts,
        ),
        st.builds(lambda s: ["replay", MISSING, "--into", "x", "--until", s], durations),
    ).map(lambda args: [*args, "--url", url])


@st.composite
def invocations(draw: st.DrawFn) -> tuple[list[str], dict[str, str]]:
    url = draw(urls())
    args = draw(commands(url))
    if draw(st.booleans()):  # the same URL from the environment instead
        args = args[:-2]
        return args, {"EVENTBUS_URL": url}
    return args, {}


@pytest.fixture
def servers(redis_url: str, kafka_url: str) -> dict[str, str]:
    """What ``{REDIS}`` and ``{KAFKA}`` stand for: the test servers' host:port."""
    return {
        "{REDIS}": redis_url.removeprefix("redis://").split("/")[0],
        "{KAFKA}": kafka_url.removeprefix("kafka://"),
    }


def _fill(text: str, servers: dict[str, str]) -> str:
    for placeholder, hostport in servers.items():
        text = text.replace(placeholder, hostport).replace(quote(placeholder, safe=""), hostport)
    return text


def _check(
    args: list[str], env: dict[str, str], allowed: tuple[int, ...], servers: dict[str, str]
) -> None:
    args = [_fill(a, servers) for a in args]
    env = {k: _fill(v, servers) for k, v in env.items()}
    result = CliRunner().invoke(app, args, env=env or None)
    output = result.stdout + result.stderr
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise AssertionError(f"{args}: {result.exception!r}") from result.exception
    assert result.exit_code in allowed, (args, env, result.exit_code, output)
    assert "Traceback" not in output
    assert PASSWORD not in output, (args, output)
    assert quote(PASSWORD) not in output
    if result.exit_code:
        errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
        assert errors or "Usage:" in result.stderr, (args, result.stderr)


@pytest.mark.redis
@pytest.mark.kafka
@pytest.mark.timeout(300)
@FUZZ
@given(invocation=invocations())
def test_commands_never_crash_nor_echo_passwords(
    servers: dict[str, str], invocation: tuple[list[str], dict[str, str]]
) -> None:
    args, env = invocation
    _check(args, env, (1, 2), servers)


@pytest.mark.redis
@pytest.mark.kafka
@pytest.mark.timeout(300)
@FUZZ
@given(
    url=urls(),
    timeout=st.one_of(st.none(), st.sampled_from(["1", "0.05", "nan", "-3", "1e9", "x"])),
    strict=st.booleans(),
)
def test_doctor_never_crashes_nor_echoes_passwords(
    servers: dict[str, str], url: str, timeout: str | None, strict: bool
) -> None:
    args = ["doctor", "--url", url, "-o", "json"]
    if timeout is not None:
        args += ["--timeout", timeout]
    if strict:
        args.append("--strict")
    _check(args, {}, (0, 1, 2), servers)
