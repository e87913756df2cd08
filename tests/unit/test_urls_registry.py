"""URL parsing, redaction and the lazy transport registry."""

import sys

import pytest

import eventbus
from eventbus._registry import open_transport
from eventbus._urls import flag, redact
from eventbus.errors import ConfigurationError, MissingExtraError, UnknownTransportError


def test_redact_hides_password_and_secret_query_values() -> None:
    url = "kafka://alice:s3cret@h:9092?sasl_password=s3cret&x=1"
    text = redact(url)
    assert "s3cret" not in text
    assert "alice" in text and "x=1" in text


def test_unknown_scheme_lists_known_and_suggests() -> None:
    with pytest.raises(UnknownTransportError) as info:
        open_transport("rediss2://u:pw@h:1")
    message = str(info.value)
    assert "redis://" in message and "kafka://" in message
    assert "Did you mean" in message
    assert "pw" not in message


def test_malformed_url_is_a_configuration_error_without_password() -> None:
    with pytest.raises(ConfigurationError) as info:
        open_transport("redis://u:hunter2@h:notaport")
    assert "hunter2" not in str(info.value)


def test_no_scheme() -> None:
    with pytest.raises(ConfigurationError, match="not of the form scheme://"):
        open_transport("localhost:6379")


def test_missing_extra_names_pip_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "confluent_kafka", None)  # import fails as if not installed
    with pytest.raises(MissingExtraError, match=r"pip install 'eventbus\[kafka\]'"):
        open_transport("kafka://127.0.0.1:9")


def test_importing_eventbus_imports_no_driver() -> None:
    import subprocess

    code = "import sys, eventbus; print('redis' in sys.modules, 'confluent_kafka' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_public_api_is_curated() -> None:
    assert sorted(eventbus.__all__) == sorted(
        [
            "AsyncDelivery",
            "AsyncEventBus",
            "AsyncRunner",
            "AsyncSubscription",
            "Capabilities",
            "Codec",
            "Delivery",
            "Event",
            "EventBus",
            "EventBusError",
            "GroupInfo",
            "JsonCodec",
            "Plan",
            "Position",
            "Replayed",
            "Runner",
            "RunnerStats",
            "StreamLayout",
            "Subscription",
            "TopicInfo",
            "TopicSpec",
            "__version__",
            "connect",
            "connect_async",
            "errors",
            "partition_for_key",
        ]
    )
    for name in eventbus.__all__:
        assert hasattr(eventbus, name)


def test_memory_url_refuses_unknown_options() -> None:
    """A misspelt option is an error naming it, not silently ignored."""
    with pytest.raises(ConfigurationError, match=r"auto_creat'.*only option is auto_create"):
        open_transport("memory://typo?auto_creat=true")
    with pytest.raises(ConfigurationError, match="'linger'"):
        open_transport("memory://typo", {"linger": 5})
    assert open_transport("memory://fine?auto_create=true").capabilities.auto_create_topics


@pytest.mark.parametrize(
    ("value", "expected"),
    [(True, True), ("TRUE", True), (" yes ", True), ("on", True), ("1", True),
     (False, False), ("False", False), ("no", False), ("off", False), ("0", False), ("", False)],
)  # fmt: skip
def test_flag_reads_boolean_options(value: object, expected: bool) -> None:
    assert flag("auto_create", value) is expected


@pytest.mark.parametrize("url", ["redis://h:1/0?auto_create=maybe", "kafka://h:1?auto_create=2"])
def test_bad_boolean_option_names_the_option_and_the_values(url: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        open_transport(url)
    message = str(info.value)
    assert "auto_create=" in message and "true or false" in message and "yes/no" in message
