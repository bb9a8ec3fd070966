"""The engine token the daemon generates for its data port."""

from __future__ import annotations

import argparse
import os
import re
import secrets
import stat
from pathlib import Path

import pytest

from stream import auth

#: ``secrets.token_urlsafe`` of these bytes starts with '-' (0xf8 >> 2 == 62).
DASH_FIRST = b"\xf8"


def test_a_generated_token_never_starts_with_a_dash(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``token_urlsafe(32)`` starts with '-' once in 64, and ``sluice-engine
    host add NAME URL --token <token>`` then failed in argparse ("expected
    one argument").  The first draw here is one of those."""
    drawn: list[int] = []

    def token_bytes(n: int | None = None) -> bytes:
        assert n is not None
        drawn.append(n)
        return DASH_FIRST + os.urandom(n - 1) if len(drawn) == 1 else os.urandom(n)

    monkeypatch.setattr(secrets, "token_bytes", token_bytes)
    token = auth.load_or_create_token(str(tmp_path))
    assert drawn and min(drawn) >= 32  # 256 bits, at least
    assert token[0].isalnum(), token
    assert re.fullmatch(r"[A-Za-z0-9_-]+", token), token  # URL-safe
    parser = argparse.ArgumentParser(exit_on_error=False)
    parser.add_argument("--token")
    assert parser.parse_args(["--token", token]).token == token


def test_a_generated_token_round_trips_through_its_file(tmp_path: Path) -> None:
    token = auth.load_or_create_token(str(tmp_path))
    path = tmp_path / auth.TOKEN_FILE
    assert path.read_text() == token + "\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert auth.load_or_create_token(str(tmp_path)) == token


def test_an_existing_token_file_is_kept_as_it_is(tmp_path: Path) -> None:
    """Tokens generated before, a leading '-' included, keep working."""
    old = "-F4x5g1YPvKCI0yBTPlhi7JscyaXBLrCxH9B3QUWWLI"
    path = tmp_path / auth.TOKEN_FILE
    path.write_text(old + "\n")
    path.chmod(0o600)
    assert auth.load_or_create_token(str(tmp_path)) == old
    assert path.read_text() == old + "\n"
