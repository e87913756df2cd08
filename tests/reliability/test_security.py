"""Security: Redis ACL users and TLS, Kafka SASL_SSL with SCRAM-SHA-512 (and PLAIN), refused
logins that fail fast, and secrets that never show up in logs, CLI output, exception messages,
tracebacks or settings reprs.

Each test starts its own server (certificates made with ``openssl`` into a temp dir).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import subprocess
import sys
import time
import traceback
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest

import eventbus
from eventbus.errors import (
    AuthenticationError,
    ConfigurationError,
    ConnectionFailedError,
    EventBusError,
)
from eventbus.testing import servers
from eventbus.testing.fixtures import unavailable

PASSWORD = "S3cret-Pw_9a8b"


def _openssl(*args: str, cwd: Path) -> None:
    exe = shutil.which("openssl")
    if exe is None:
        unavailable("openssl is not installed (apt-get install openssl)")
    subprocess.run([exe, *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def make_certs(folder: Path) -> dict[str, Path]:
    """A CA, a server certificate for 127.0.0.1/localhost and a client certificate."""
    folder.mkdir(parents=True, exist_ok=True)
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
             "/CN=eventbus-test-ca", "-keyout", "ca.key", "-out", "ca.pem", cwd=folder)  # fmt: skip
    ext = folder / "san.ext"
    ext.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    for name in ("server", "client"):
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}",
                 "-keyout", f"{name}.key", "-out", f"{name}.csr", cwd=folder)  # fmt: skip
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
                 "-CAcreateserial", "-days", "2", "-extfile", str(ext), "-out", f"{name}.pem",
                 cwd=folder)  # fmt: skip
    return {p.stem + p.suffix.replace(".", "_"): p for p in folder.iterdir()}


def redis_cli(port: int, *args: str) -> str:
    out = subprocess.run(
        ["redis-cli", "-p", str(port), *args], capture_output=True, check=True, timeout=30
    )
    return out.stdout.decode().strip()


def round_trip(url: str, topic: str) -> None:
    with eventbus.connect(url) as bus:
        bus.create_topic(topic)
        bus.publish(topic, {"n": 1})
        with bus.subscribe(topic, group="g") as sub:
            got = sub.fetch(1, timeout=5)
            assert [d.event.data for d in got] == [{"n": 1}]
            got[0].ack()


@pytest.fixture
def acl_redis() -> Iterator[servers.ServerProcess]:
    if shutil.which("redis-cli") is None:
        unavailable("redis-cli is not installed (apt-get install redis-tools)")
    with servers.start_redis() as server:
        redis_cli(server.port, "ACL", "SETUSER", "alice", "on", f">{PASSWORD}", "~*", "&*", "+@all")
        yield server


def test_redis_acl_user_and_wrong_password(acl_redis: servers.ServerProcess) -> None:
    port = acl_redis.port
    round_trip(f"redis://alice:{quote(PASSWORD)}@127.0.0.1:{port}/0", "acl-topic")
    bad = f"redis://alice:{PASSWORD}x@127.0.0.1:{port}/0"
    with pytest.raises(AuthenticationError) as caught:
        eventbus.connect(bad)
    text = str(caught.value)
    assert PASSWORD not in text
    assert "password" in text.lower() or "credential" in text.lower(), text
    # the default user switched off: no credentials at all is refused clearly too
    redis_cli(port, "ACL", "SETUSER", "default", "off")
    with pytest.raises(AuthenticationError):
        eventbus.connect(f"redis://127.0.0.1:{port}/0")


@pytest.mark.timeout(120)
def test_redis_over_tls(tmp_path: Path) -> None:
    certs = make_certs(tmp_path / "certs")
    tls_port = servers.free_port()
    args = ["--tls-port", str(tls_port), "--tls-cert-file", str(certs["server_pem"]),
            "--tls-key-file", str(certs["server_key"]), "--tls-ca-cert-file", str(certs["ca_pem"]),
            "--tls-auth-clients", "optional"]  # fmt: skip
    try:
        server = servers.start_redis(extra_args=args)
    except servers.ServerError as exc:
        unavailable(f"this redis-server cannot do TLS: {exc}")
    with server:
        base = f"rediss://127.0.0.1:{tls_port}/0?ssl_ca_certs={certs['ca_pem']}"
        round_trip(base, "tls-topic")
        client = f"{base}&ssl_certfile={certs['client_pem']}&ssl_keyfile={certs['client_key']}"
        round_trip(client, "tls-topic-2")
        other_ca = make_certs(tmp_path / "other")["ca_pem"]
        with pytest.raises(ConnectionFailedError) as caught:  # a CA that did not sign it
            eventbus.connect(f"rediss://127.0.0.1:{tls_port}/0?ssl_ca_certs={other_ca}")
        assert "certificate" in str(caught.value).lower() or "ssl" in str(caught.value).lower()
        with pytest.raises(ConnectionFailedError):  # plain text to the TLS port
            eventbus.connect(f"redis://127.0.0.1:{tls_port}/0?socket_timeout=2")
        # TLS to the plain port: the handshake never completes; said after one attempt, not
        # after the retries (about a minute)
        with pytest.raises(ConfigurationError) as plain:
            eventbus.connect(f"rediss://127.0.0.1:{server.port}/0?ssl_ca_certs={certs['ca_pem']}")
        assert "plain text" in str(plain.value) and "redis://" in str(plain.value)


# -------------------------------------------------------------------------------------------
# Kafka SASL_SSL + SCRAM-SHA-512 and PLAIN (broker started here: servers.start_kafka has no
# listeners with security)


def start_sasl_ssl_kafka(
    workdir: Path, certs: dict[str, Path]
) -> tuple[servers.ServerProcess, int]:
    """A single-node KRaft broker with a SASL_SSL listener (SCRAM-SHA-512 and PLAIN, user
    alice) for clients and a PLAINTEXT listener for the inter-broker traffic and our readiness
    check. SCRAM-SHA-256 is deliberately not enabled."""
    java = servers.require_tool("java", "to run Apache Kafka")
    libs = servers.ensure_kafka_jars()
    classpath = servers.kafka_classpath(libs)
    store = workdir / "server.p12"
    _openssl("pkcs12", "-export", "-in", str(certs["server_pem"]), "-inkey",
             str(certs["server_key"]), "-out", str(store), "-passout", "pass:storepw",
             "-name", "server", cwd=workdir)  # fmt: skip
    (workdir / "logs").mkdir()
    log_path = workdir / "logs" / "server.log"
    (workdir / "log4j2.xml").write_text(servers.kafka_server.LOG4J2_XML.format(log=log_path))
    sasl, plain, controller = servers.free_port(), servers.free_port(), servers.free_port()
    overrides = {
        "listeners": f"SASL_SSL://127.0.0.1:{sasl},PLAINTEXT://127.0.0.1:{plain},"
        f"CONTROLLER://127.0.0.1:{controller}",
        "advertised.listeners": f"SASL_SSL://127.0.0.1:{sasl},PLAINTEXT://127.0.0.1:{plain}",
        "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT,"
        "SASL_SSL:SASL_SSL",
        "sasl.enabled.mechanisms": "SCRAM-SHA-512,PLAIN",
        "listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config": (
            "org.apache.kafka.common.security.scram.ScramLoginModule required;"
        ),
        "listener.name.sasl_ssl.plain.sasl.jaas.config": (
            "org.apache.kafka.common.security.plain.PlainLoginModule required "
            f'user_alice="{PASSWORD}";'
        ),
        "ssl.keystore.location": str(store),
        "ssl.keystore.type": "PKCS12",
        "ssl.keystore.password": "storepw",
        "ssl.key.password": "storepw",
    }
    props = workdir / "server.properties"
    props.write_text(servers.kafka_properties(workdir, plain, controller, overrides))
    fmt = subprocess.run(
        servers.java_argv(java, classpath, workdir, "256m", [
            "kafka.tools.StorageTool", "format", "-t", servers.kafka_cluster_id(), "-c",
            str(props), "--add-scram",
            f"SCRAM-SHA-512=[name=alice,password={PASSWORD}]"]),
        cwd=workdir, capture_output=True, text=True, check=False, timeout=120,
    )  # fmt: skip
    assert fmt.returncode == 0, fmt.stdout + fmt.stderr
    argv = servers.java_argv(java, classpath, workdir, "768m", ["kafka.Kafka", str(props)])
    pid, popen = servers.spawn(argv, cwd=workdir, out_path=workdir / "kafka.out", detached=False)
    server = servers.ServerProcess(
        kind="kafka", pid=pid, port=plain, url=f"kafka://127.0.0.1:{plain}", workdir=workdir,
        log_path=log_path, keep_workdir=True, _popen=popen,
    )  # fmt: skip
    ok = servers.wait_until(
        lambda: servers.kafka_answers(f"127.0.0.1:{plain}", timeout=2.0),
        timeout=90,
        interval=0.2,
        give_up=lambda: None if server.alive() else "the broker exited",
    )
    if not ok:
        server.stop()
        pytest.fail(f"SASL_SSL broker did not start:\n{server.log_tail()}")
    return server, sasl


@pytest.fixture(scope="module")
def sasl_kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, str]]:
    """(SASL_SSL port, the URL query for it) of a broker started for this module."""
    tmp = tmp_path_factory.mktemp("sasl")
    certs = make_certs(tmp / "certs")
    workdir = tmp / "kafka"
    workdir.mkdir()
    server, port = start_sasl_ssl_kafka(workdir, certs)
    with server:
        yield (
            port,
            (
                "security_protocol=SASL_SSL&sasl_mechanism=SCRAM-SHA-512"
                f"&ssl_ca_location={certs['ca_pem']}"
            ),
        )


@pytest.mark.kafka
@pytest.mark.timeout(180)
def test_kafka_sasl_ssl_scram(
    sasl_kafka: tuple[int, str], caplog: pytest.LogCaptureFixture
) -> None:
    port, query = sasl_kafka
    caplog.set_level(logging.DEBUG)
    round_trip(f"kafka://alice:{quote(PASSWORD)}@127.0.0.1:{port}?{query}", "sasl-topic")
    for url in (
        f"kafka://alice:wrong{PASSWORD}@127.0.0.1:{port}?{query}&connect_timeout=3",
        f"kafka://alice:{quote(PASSWORD)}@127.0.0.1:{port}?connect_timeout=3",  # no TLS
    ):
        with pytest.raises(ConnectionFailedError) as caught:
            eventbus.connect(url)
        assert PASSWORD not in _all_text(caught.value)
    assert PASSWORD not in caplog.text


REFUSED_WITHIN = 10.0
"""A refused login must fail this fast, with connect_timeout twice that: librdkafka reports
it after the TLS and SASL round trips (well under a second here)."""


@pytest.mark.kafka
@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    ("userinfo", "mechanism", "hint"),
    [
        (f"alice:wrong{PASSWORD}", "SCRAM-SHA-512", "password"),
        (f"mallory:{quote(PASSWORD)}", "SCRAM-SHA-512", "user name"),
        (f"alice:wrong{PASSWORD}", "PLAIN", "password"),
        (f"alice:{quote(PASSWORD)}", "SCRAM-SHA-256", "sasl_mechanism"),  # not enabled
    ],
    ids=["scram-wrong-password", "scram-unknown-user", "plain-wrong-password", "mechanism-off"],
)
def test_kafka_refused_login_is_authentication_error(
    sasl_kafka: tuple[int, str],
    caplog: pytest.LogCaptureFixture,
    userinfo: str,
    mechanism: str,
    hint: str,
) -> None:
    """A refused SASL login raises AuthenticationError as soon as librdkafka reports it (which
    it does only through error_cb), not ConnectionFailedError at connect_timeout."""
    port, query = sasl_kafka
    caplog.set_level(logging.DEBUG)
    query = query.replace("sasl_mechanism=SCRAM-SHA-512", f"sasl_mechanism={mechanism}")
    url = f"kafka://{userinfo}@127.0.0.1:{port}?{query}&connect_timeout={2 * REFUSED_WITHIN}"
    started = time.monotonic()
    with pytest.raises(AuthenticationError) as caught:
        eventbus.connect(url)
    took = time.monotonic() - started
    assert took < REFUSED_WITHIN, f"took {took:.1f} s: {caught.value}"
    text = str(caught.value)
    assert "refused the SASL login" in text and "127.0.0.1" in text, text
    assert hint in text, text
    assert PASSWORD not in _all_text(caught.value)
    assert PASSWORD not in caplog.text


@contextlib.contextmanager
def password_changed_under(port: int, query: str, user: str) -> Iterator[eventbus.EventBus]:
    """A bus logged in as a new SCRAM ``user`` whose password is then changed: its admin
    connection stays logged in, every new client it makes is refused."""
    from confluent_kafka.admin import (
        AdminClient,
        ScramCredentialInfo,
        ScramMechanism,
        UserScramCredentialUpsertion,
    )

    ca = query.rpartition("ssl_ca_location=")[2]
    admin = AdminClient({
        "bootstrap.servers": f"127.0.0.1:{port}", "security.protocol": "SASL_SSL",
        "sasl.mechanism": "SCRAM-SHA-512", "ssl.ca.location": ca,
        "sasl.username": "alice", "sasl.password": PASSWORD,
        "logger": logging.getLogger("tests.security.librdkafka"),  # not to stderr
    })  # fmt: skip

    def set_password(password: str) -> None:
        info = ScramCredentialInfo(ScramMechanism.SCRAM_SHA_512, 4096)
        change = UserScramCredentialUpsertion(user, info, password.encode())
        for future in admin.alter_user_scram_credentials([change], request_timeout=30).values():
            future.result(timeout=30)

    def url(password: str) -> str:
        return f"kafka://{user}:{quote(password)}@127.0.0.1:{port}?{query}"

    def refused(password: str) -> bool:
        try:
            eventbus.connect(url(password)).close()
        except AuthenticationError:
            return True
        return False

    old, new = f"old{PASSWORD}", f"new{PASSWORD}"
    set_password(old)
    assert servers.wait_until(lambda: not refused(old), timeout=30, interval=0.2)
    with eventbus.connect(url(old), publish_timeout=60) as bus:
        bus.create_topic(f"{user}-topic")
        set_password(new)
        assert servers.wait_until(lambda: refused(old), timeout=30, interval=0.2)
        yield bus


@pytest.mark.kafka
@pytest.mark.timeout(120)
def test_kafka_publish_after_password_change(
    sasl_kafka: tuple[int, str], caplog: pytest.LogCaptureFixture
) -> None:
    """The producer is made after the password changed: its login is refused, and publish
    raises AuthenticationError promptly instead of waiting out publish_timeout."""
    caplog.set_level(logging.DEBUG)
    with password_changed_under(*sasl_kafka, user="carol") as bus:
        started = time.monotonic()
        with pytest.raises(AuthenticationError) as caught:
            bus.publish("carol-topic", {"n": 1})
        took = time.monotonic() - started
    assert took < REFUSED_WITHIN, f"took {took:.1f} s: {caught.value}"
    assert "refused the SASL login" in str(caught.value)
    assert PASSWORD not in _all_text(caught.value)
    assert PASSWORD not in caplog.text


@pytest.mark.kafka
@pytest.mark.timeout(120)
def test_kafka_subscribe_after_password_change(
    sasl_kafka: tuple[int, str], caplog: pytest.LogCaptureFixture
) -> None:
    """A consumer made after the password changed is refused: subscribe raises
    AuthenticationError promptly instead of waiting for a group assignment."""
    caplog.set_level(logging.DEBUG)
    with password_changed_under(*sasl_kafka, user="dave") as bus:
        started = time.monotonic()
        with (
            pytest.raises(ConnectionFailedError) as caught,
            bus.subscribe("dave-topic", group="dave") as sub,
        ):
            sub.fetch(1, timeout=30)
        took = time.monotonic() - started
    assert took < REFUSED_WITHIN, f"took {took:.1f} s: {caught.value}"
    assert PASSWORD not in _all_text(caught.value)
    assert PASSWORD not in caplog.text
    assert isinstance(caught.value, AuthenticationError), caught.value


@pytest.mark.kafka
@pytest.mark.timeout(120)
def test_kafka_replay_after_password_change(
    sasl_kafka: tuple[int, str], caplog: pytest.LogCaptureFixture
) -> None:
    """The reader is made after the password changed: replay raises AuthenticationError
    promptly instead of waiting out connect_timeout for the partition's watermarks."""
    caplog.set_level(logging.DEBUG)
    with password_changed_under(*sasl_kafka, user="erin") as bus:
        started = time.monotonic()
        with pytest.raises(AuthenticationError) as caught:
            list(bus.replay("erin-topic"))
        took = time.monotonic() - started
    assert took < REFUSED_WITHIN, f"took {took:.1f} s: {caught.value}"
    assert PASSWORD not in _all_text(caught.value)
    assert PASSWORD not in caplog.text


# -------------------------------------------------------------------------------------------
# secrets never leak


def _all_text(exc: BaseException) -> str:
    return "".join(traceback.format_exception(exc)) + repr(exc) + str(exc)


def test_secrets_never_leak(
    acl_redis: servers.ServerProcess, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    from eventbus.adapters.kafka._settings import KafkaSettings
    from eventbus.adapters.redis_streams._settings import RedisSettings

    port = acl_redis.port
    caplog.set_level(logging.DEBUG)
    seen: list[str] = []
    good = f"redis://alice:{PASSWORD}@127.0.0.1:{port}/0"
    wrong = f"redis://alice:{PASSWORD}x@127.0.0.1:{port}/0"
    unreachable = (
        f"redis://alice:{PASSWORD}@127.0.0.1:{servers.free_port()}/0?socket_connect_timeout=1"
    )
    kafka_down = f"kafka://alice:{PASSWORD}@127.0.0.1:{servers.free_port()}?connect_timeout=1"
    for url in (wrong, unreachable, kafka_down, f"rediss://alice:{PASSWORD}@[bad/0"):
        with pytest.raises(EventBusError) as caught:
            eventbus.connect(url)
        seen.append(_all_text(caught.value))
    seen.append(repr(RedisSettings.from_url(good)) + str(RedisSettings.from_url(good)))
    seen.append(repr(KafkaSettings.from_url(kafka_down)) + str(KafkaSettings.from_url(kafka_down)))
    seen.append(repr(KafkaSettings.from_url(
        "kafka://h:1", {"config": {"sasl.password": PASSWORD, "ssl.key.password": PASSWORD}}
    )))  # fmt: skip
    with eventbus.connect(good) as bus:
        seen.append(repr(bus) + repr(bus.aio.transport) + repr(vars(bus.aio.transport)))
        bus.create_topic("secret-check")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    runs = [
        (url, ["topics", "list", "--url", url, *fmt])
        for url, fmt in ((good, []), (good, ["-o", "json"]), (wrong, []), (unreachable, []))
    ]
    procs = [  # the CLI runs side by side: each is a fresh interpreter
        (url, subprocess.Popen(
            [sys.executable, "-m", "eventbus.cli", *args],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        ))
        for url, args in runs
    ]  # fmt: skip
    for url, proc in procs:
        stdout, stderr = proc.communicate(timeout=60)
        seen.append(stdout + stderr)
        if url == good:
            assert proc.returncode == 0, stderr
            assert "secret-check" in stdout
        else:
            assert proc.returncode != 0
    seen.append(caplog.text)
    leaked = [text for text in seen if PASSWORD in text]
    assert not leaked, leaked[0][:2000]
