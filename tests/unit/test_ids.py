"""Identifier formats: generated ids fit the checks and never look like a CLI option."""
from __future__ import annotations

import pytest

from gotapi3dp.wire import ids
from gotapi3dp.wire.errors import P3DError


def test_new_ids_never_start_with_a_dash(monkeypatch: pytest.MonkeyPatch) -> None:
    drawn = iter(["-abc", "--x", "Zok-"])
    monkeypatch.setattr(ids.secrets, "token_urlsafe", lambda n: next(drawn))
    assert ids.new_id() == "Zok-"


def test_new_ids_are_valid_content_ids() -> None:
    for _ in range(2000):  # one in 64 used to start with "-"
        value = ids.new_id()
        assert not value.startswith("-")
        assert ids.check_content_id(value) == value
        assert len(value) == 22


@pytest.mark.parametrize("bad", ["", "a" * 65, "a b", "a/b", 7, None])
def test_check_content_id_refuses(bad: object) -> None:
    with pytest.raises(P3DError):
        ids.check_content_id(bad)
