"""Redis behind Sentinel, configured as in Celery: the URL, the transport options, and
what reaches redis-py (the live topology is tested in tests/integration/test_sentinel.py)."""

from __future__ import annotations

import pytest

from conveyor import Conveyor
from conveyor.backends import connect_backend
from conveyor.backends.redis import RedisResultBackend
from conveyor.brokers import connect_broker
from conveyor.brokers.base import BrokerOptions
from conveyor.brokers.redis import RedisBroker
from conveyor.config import Settings, redact_url
from conveyor.exceptions import ConfigurationError
from conveyor.storage.redis_sentinel import SentinelTarget, parse_sentinel_url

URL = "sentinel://:s3cret@10.0.0.1:26379/2;sentinel://:s3cret@10.0.0.2/2;sentinel://10.0.0.3:26380"
MASTER = {"master_name": "mymaster"}


def test_celery_url_names_every_sentinel_the_master_password_and_database() -> None:
    target = parse_sentinel_url(URL, {**MASTER, "sentinel_kwargs": {"password": "sentinel-pw"}})

    assert target == SentinelTarget(
        sentinels=(("10.0.0.1", 26379), ("10.0.0.2", 26379), ("10.0.0.3", 26380)),
        master_name="mymaster",
        db=2,
        password="s3cret",
        sentinel_kwargs={"password": "sentinel-pw"},
    )
    assert target.password == "s3cret"  # the master's, as in Celery
    assert "s3cret" not in repr(target)
    assert "sentinel-pw" not in repr(target)


def test_user_and_percent_encoded_password_are_read() -> None:
    target = parse_sentinel_url("sentinel://app:p%40ss%2Fword@h:1/0", MASTER)
    assert (target.username, target.password) == ("app", "p@ss/word")


@pytest.mark.parametrize(
    ("url", "options", "message"),
    [
        ("sentinel://h:26379/0", {}, r"broker_transport_options = \{'master_name'"),
        ("sentinel://h:26379/0;redis://h:6379/0", MASTER, "each part must start with sentinel://"),
        ("sentinel://h:port/0", MASTER, "port is not a number"),
        ("sentinel://:26379/0", MASTER, "names no host"),
        ("sentinel://h/0;sentinel://g/1", MASTER, "different databases"),
        ("sentinel://:a@h/0;sentinel://:b@g/0", MASTER, "different master passwords"),
        ("sentinel://h/x", MASTER, "database must be a number"),
        ("sentinel://h/0?master_name=m", MASTER, "takes no query"),
        ("sentinel://h/0", {**MASTER, "sentinel_kwargs": {"pasword": "x"}}, "unknown options"),
    ],
)
def test_malformed_sentinel_configuration_is_a_clear_error(
    url: str, options: dict[str, object], message: str
) -> None:
    with pytest.raises(ConfigurationError, match=message):
        parse_sentinel_url(url, options)


def test_errors_never_show_the_password() -> None:
    with pytest.raises(ConfigurationError) as caught:
        parse_sentinel_url("sentinel://:hunter2@h/0;sentinel://:hunter2@g/x", MASTER)
    assert "hunter2" not in str(caught.value)


def test_each_sentinel_of_a_url_has_its_password_masked() -> None:
    assert redact_url(URL) == (
        "sentinel://:***@10.0.0.1:26379/2;sentinel://:***@10.0.0.2/2;sentinel://10.0.0.3:26380"
    )


def test_broker_and_backend_accept_sentinel_urls_and_check_them_at_once() -> None:
    options = BrokerOptions(transport_options=MASTER, replica_acks=1)
    broker = connect_broker(URL, options)
    assert isinstance(broker, RedisBroker)
    backend = connect_backend(URL, transport_options=MASTER, replica_acks=1)
    assert isinstance(backend, RedisResultBackend)
    with pytest.raises(ConfigurationError, match="result_backend_transport_options"):
        connect_backend(URL, transport_options={})
    with pytest.raises(ConfigurationError, match="broker_transport_options"):
        connect_broker(URL, BrokerOptions())


def test_results_beside_the_messages_use_the_broker_transport_options() -> None:
    app = Conveyor("sentinel-app", broker=URL)
    app.conf.broker_transport_options = MASTER
    assert isinstance(app.backend, RedisResultBackend)  # no master_name error
    app.close()


def test_a_separate_backend_takes_its_own_transport_options() -> None:
    app = Conveyor("sentinel-app", broker=URL, backend=URL.replace("/2", "/3"))
    app.conf.broker_transport_options = MASTER
    with pytest.raises(ConfigurationError, match="result_backend_transport_options"):
        _ = app.backend
    app.conf.result_backend_transport_options = MASTER
    assert isinstance(app.backend, RedisResultBackend)
    app.close()


def test_transport_options_are_checked_with_a_suggestion() -> None:
    with pytest.raises(ConfigurationError, match="did you mean 'master_name'"):
        Settings(broker_transport_options={"master_nam": "m"})
    with pytest.raises(ConfigurationError, match="sentinel_kwargs is a dict"):
        Settings(result_backend_transport_options={"sentinel_kwargs": "pw"})
    with pytest.raises(ConfigurationError, match="must be a dict"):
        Settings(broker_transport_options=[("master_name", "m")])


def test_kombu_options_conveyor_does_not_need_are_reported_not_refused() -> None:
    conf = Settings(
        broker_transport_options={"master_name": "m", "visibility_timeout": 43200},
        result_backend_transport_options={"retry_policy": {"timeout": 5.0}},
    )
    assert [name for name, _ in conf.ignored_settings()] == [
        "broker_transport_options['visibility_timeout']",
        "result_backend_transport_options['retry_policy']",
    ]


def test_sentinel_passwords_in_options_never_show_in_the_settings_repr() -> None:
    conf = Settings(
        broker_transport_options={"master_name": "m", "sentinel_kwargs": {"password": "hunter2"}}
    )
    assert "hunter2" not in repr(conf)
    assert "master_name" in repr(conf)


def test_replica_acks_is_a_count() -> None:
    assert Settings(broker_replica_acks=2).broker_replica_acks == 2
    with pytest.raises(ConfigurationError, match="broker_replica_acks"):
        Settings(broker_replica_acks=-1)
