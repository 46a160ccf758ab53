"""Progress bars: drawn on a terminal only, silenced by -q (the logger set above INFO), forced by `enabled`."""

from __future__ import annotations

import io
import logging

import pytest

from qwenvl_min.utils import progress


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture
def info_level():
    """The logger as a library user finds it: no level of its own."""
    logger = logging.getLogger(progress.LOGGER_NAME)
    old = logger.level
    logger.setLevel(logging.NOTSET)
    yield logger
    logger.setLevel(old)


def _drawn(monkeypatch, stream, **options) -> str:
    monkeypatch.setattr(progress.sys, "stderr", stream)
    for _ in progress.progress_bar(range(3), desc="work", **options):
        pass
    return stream.getvalue()


def test_pipe_gets_no_bar(monkeypatch, info_level):
    assert _drawn(monkeypatch, io.StringIO()) == ""


def test_terminal_gets_a_bar(monkeypatch, info_level):
    assert "work" in _drawn(monkeypatch, FakeTerminal())


def test_quiet_silences_the_terminal_bar(monkeypatch, info_level):
    info_level.setLevel(logging.WARNING)
    assert _drawn(monkeypatch, FakeTerminal()) == ""


def test_enabled_overrides_both_ways(monkeypatch, info_level):
    assert "work" in _drawn(monkeypatch, io.StringIO(), enabled=True)
    assert _drawn(monkeypatch, FakeTerminal(), enabled=False) == ""
