from __future__ import annotations

import pytest

from outlast import ConfigError, Outlast, Settings


def test_defaults_follow_the_protocol():
    settings = Settings.load(environ={})
    assert settings.store == "sqlite:///outlast.db"
    assert (settings.gateway_timeout, settings.margin, settings.hold_s) == (29, 4, 25)
    assert settings.max_body == 1024 * 1024
    assert settings.retention == 86400
    assert settings.max_attempts == 3


def test_flag_beats_variable_beats_keyword():
    keywords = {"gateway_timeout": 10, "margin": 2, "workers": 3}
    environ = {"OUTLAST_GATEWAY_TIMEOUT": "20", "OUTLAST_WORKERS": "5"}
    settings = Settings.load(keywords, flags={"workers": 7, "margin": None}, environ=environ)
    assert settings.gateway_timeout == 20
    assert settings.margin == 2
    assert settings.workers == 7


def test_lists_come_comma_separated_from_the_environment():
    settings = Settings.load(environ={"OUTLAST_API_KEYS": "a, b,,c", "OUTLAST_WEBHOOK_ALLOW": "127.0.0.0/8"})
    assert settings.api_keys == ("a", "b", "c")
    assert settings.webhook_allow == ("127.0.0.0/8",)


@pytest.mark.parametrize(
    ("keywords", "environ", "message"),
    [
        ({"margin": 30}, {}, "margin (30 s) must be smaller than gateway_timeout"),
        ({}, {"OUTLAST_LEASE": "soon"}, "lease (from OUTLAST_LEASE)"),
        ({"workers": -1}, {}, "workers"),
        ({"wokers": 2}, {}, "unknown setting(s): wokers"),
    ],
)
def test_bad_settings_say_what_is_wrong(keywords, environ, message):
    with pytest.raises(ConfigError) as info:
        Settings.load(keywords, environ=environ)
    assert message in str(info.value)


def test_configure_applies_flags_on_top(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("OUTLAST_STORE", raising=False)
    ot = Outlast(store="memory://", lease=5)
    ot.configure(lease=9, store=None)
    assert ot.settings.lease == 9
    assert ot.settings.store == "memory://"
    with pytest.raises(ConfigError):
        ot.configure(gateway_timeout=1)


def test_cors_origins_are_split_and_checked():
    settings = Settings.load(environ={"OUTLAST_CORS_ORIGINS": "https://app.example, http://localhost:3000/"})
    assert settings.cors_origins == ("https://app.example", "http://localhost:3000")
    assert Settings.load(environ={}).cors_origins == ()
    with pytest.raises(ConfigError, match="cors_origins"):
        Settings.load(environ={"OUTLAST_CORS_ORIGINS": "https://app.example/path"})
