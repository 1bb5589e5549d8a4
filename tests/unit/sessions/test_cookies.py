"""The pure part of prefork_lb.sessions: ids, signing, expiry, cookie attributes and parsing."""

from __future__ import annotations

import pytest

from prefork_lb.sessions.cookies import CookieSigner, cookie_value, new_session_id, set_cookie_header

SECRET = "sixteen bytes at least, here"


def test_session_ids_are_long_random_and_url_safe() -> None:
    ids = {new_session_id() for _ in range(100)}
    assert len(ids) == 100
    for sid in ids:
        assert len(sid) == 43
        assert set(sid) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


def test_a_signed_id_verifies_and_any_change_does_not() -> None:
    signer = CookieSigner(SECRET, max_age=100)
    value = signer.sign("abc", now=1000)
    assert signer.verify(value, now=1000) == "abc"
    sid, issued, sig = value.split(".")
    tampered = [
        f"abd.{issued}.{sig}",  # another id
        f"{sid}.{int(issued) + 1}.{sig}",  # a later issue time
        f"{sid}.{issued}.{sig[:-1]}{'A' if sig[-1] != 'A' else 'B'}",
        f"{sid}.{issued}",
        f"{sid}..{sig}",
        "",
        "...",
        f"{sid}.-5.{sig}",
    ]
    for value in tampered:
        assert signer.verify(value, now=1000) is None, value
    assert CookieSigner("another secret, also long", 100).verify(signer.sign("abc", 1000), 1000) is None


def test_a_cookie_older_than_max_age_or_from_the_far_future_is_refused() -> None:
    signer = CookieSigner(SECRET, max_age=100)
    value = signer.sign("abc", now=1000)
    assert signer.verify(value, now=1100) == "abc"
    assert signer.verify(value, now=1101) is None
    assert signer.verify(value, now=990) == "abc"  # a host whose clock is a little behind
    assert signer.verify(value, now=900) is None


def test_old_secrets_still_verify_while_the_first_one_signs() -> None:
    old = CookieSigner("the old secret, long enough", 100)
    rotated = CookieSigner(["the new secret, long enough", "the old secret, long enough"], 100)
    assert rotated.verify(old.sign("abc", 5), 5) == "abc"
    assert old.verify(rotated.sign("abc", 5), 5) is None


def test_secrets_must_be_given_and_long_enough() -> None:
    with pytest.raises(ValueError, match="at least 16 bytes"):
        CookieSigner("short", 100)
    with pytest.raises(ValueError, match="required"):
        CookieSigner([], 100)


def test_set_cookie_attributes() -> None:
    plain = set_cookie_header("session", "v", max_age=60, secure=False, samesite="Lax")
    assert plain == "session=v; Path=/; Max-Age=60; HttpOnly; SameSite=Lax"
    tls = set_cookie_header(
        "s", "v", max_age=60, secure=True, samesite="Strict", path="/app", domain="ex.org"
    )
    assert tls == "s=v; Path=/app; Max-Age=60; Domain=ex.org; HttpOnly; Secure; SameSite=Strict"
    with pytest.raises(ValueError, match="samesite"):
        set_cookie_header("s", "v", max_age=60, secure=True, samesite="lax")


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, None),
        ("", None),
        ("session=abc", "abc"),
        ("a=1; session=abc; b=2", "abc"),
        ("a=1;session=abc", "abc"),
        ('session="abc"', "abc"),
        ("xsession=abc; session=def", "def"),
        ("session=first; session=second", "first"),
        ("session", None),
        ("other=abc", None),
    ],
)
def test_cookie_value(header: str | None, expected: str | None) -> None:
    assert cookie_value(header, "session") == expected
