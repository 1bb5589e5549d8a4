"""prefork_lb.proxy.cache_directives: Cache-Control, HTTP-dates, header lookups (RFC 9111/9110)."""

from __future__ import annotations

from prefork_lb.proxy.cache_directives import (
    DELTA_MAX,
    INVALID,
    CacheControl,
    cache_control_of,
    field_list,
    first_value,
    format_http_date,
    header_values,
    parse_cache_control,
    parse_delta_seconds,
    parse_http_date,
)

NOV_6_1994 = 784111777.0


def cc(*lines: bytes) -> CacheControl:
    return parse_cache_control(lines)


def test_rfc9111_5_2_directive_names_are_case_insensitive() -> None:
    parsed = cc(b"Max-Age=5, NO-STORE")
    assert parsed.seconds("max-age") == 5
    assert parsed.has("no-store")


def test_rfc9111_5_2_quoted_argument_accepted_for_delta_seconds() -> None:
    """5.2: recipients ought to accept both token and quoted-string forms."""
    assert cc(b'max-age="60"').seconds("max-age") == 60


def test_rfc9111_5_2_lines_are_combined() -> None:
    parsed = cc(b"public", b"max-age=10")
    assert parsed.has("public") and parsed.seconds("max-age") == 10


def test_rfc9111_5_2_commas_inside_quoted_string_do_not_split() -> None:
    parsed = cc(b'no-cache="set-cookie, x-foo", max-age=3')
    assert parsed.field_names("no-cache") == frozenset({"set-cookie", "x-foo"})
    assert parsed.seconds("max-age") == 3


def test_rfc9110_5_6_4_quoted_pair_is_unescaped() -> None:
    assert cc(b'ext="a\\"b"').directives["ext"] == 'a"b'


def test_rfc9111_5_2_duplicate_with_same_value_is_fine() -> None:
    assert cc(b"max-age=5, max-age=5").seconds("max-age") == 5


def test_rfc9111_5_2_duplicate_with_other_value_is_invalid() -> None:
    """5.2: with several values either use the first or treat as stale; we say invalid."""
    parsed = cc(b"max-age=5", b"max-age=50")
    assert parsed.seconds("max-age") == INVALID
    assert parsed.directives["max-age"] == "5"


def test_rfc9111_1_2_2_non_digit_delta_seconds_is_invalid() -> None:
    assert cc(b"max-age=5x").seconds("max-age") == INVALID
    assert cc(b"max-age=-1").seconds("max-age") == INVALID
    assert cc(b"max-age").seconds("max-age") == INVALID
    assert cc(b"max-age=").seconds("max-age") == INVALID


def test_rfc9111_5_2_malformed_quoted_argument_is_invalid() -> None:
    assert cc(b'max-age="5').seconds("max-age") == INVALID
    assert cc(b'max-age="5"x"').seconds("max-age") == INVALID
    assert cc(b'max-age="5\\').seconds("max-age") == INVALID
    assert cc(b'max-age="5\\"').seconds("max-age") == INVALID
    assert cc(b"max-age=a b").seconds("max-age") == INVALID


def test_rfc9111_5_2_members_that_are_not_directives_are_skipped() -> None:
    parsed = cc(b", ,=5, public,,")
    assert dict(parsed.directives) == {"public": None}


def test_absent_directive_and_no_header() -> None:
    assert cc().seconds("max-age") is None
    assert not cc().has("no-store")
    assert cache_control_of([("x", b"y")]).directives == {}


def test_rfc9111_1_2_2_delta_seconds_capped_at_2_pow_31() -> None:
    assert cc(b"max-age=99999999999999").seconds("max-age") == DELTA_MAX
    assert parse_delta_seconds("12") == 12
    assert parse_delta_seconds(None) is None
    assert parse_delta_seconds(b" 7 ") == 7


def test_rfc9111_5_2_2_7_unqualified_and_empty_qualified_field_names() -> None:
    assert cc(b"private").field_names("private") is None
    assert cc(b'private=""').field_names("private") is None
    assert cc(b"max-age=1").field_names("private") is None


def test_rfc9110_5_6_7_three_date_forms() -> None:
    assert parse_http_date(b"Sun, 06 Nov 1994 08:49:37 GMT") == NOV_6_1994
    assert parse_http_date(b"Sunday, 06-Nov-94 08:49:37 GMT") == NOV_6_1994
    assert parse_http_date(b"Sun Nov  6 08:49:37 1994") == NOV_6_1994


def test_rfc9110_5_6_7_invalid_or_absent_date() -> None:
    assert parse_http_date(None) is None
    assert parse_http_date(b"0") is None
    assert parse_http_date(b"yesterday") is None
    assert parse_http_date(b"Sun, 06 Nov 1994 99:49:37 GMT") is None
    assert parse_http_date(b"Sun, 06 Nov 99999999999 08:49:37 GMT") is None


def test_rfc9110_5_6_7_date_without_zone_is_gmt_not_local_time() -> None:
    assert parse_http_date(b"Sun, 06 Nov 1994 08:49:37") == NOV_6_1994
    assert parse_http_date(b"Sun, 06 Nov 1994 08:49:37 -0000") == NOV_6_1994


def test_format_http_date_round_trips() -> None:
    assert format_http_date(NOV_6_1994) == b"Sun, 06 Nov 1994 08:49:37 GMT"
    assert parse_http_date(format_http_date(NOV_6_1994)) == NOV_6_1994


def test_header_helpers() -> None:
    headers = [("vary", b"Accept, ACCEPT-encoding"), ("x", b"1"), ("vary", b" ,cookie")]
    assert header_values(headers, "vary") == [b"Accept, ACCEPT-encoding", b" ,cookie"]
    assert first_value(headers, "x") == b"1"
    assert first_value(headers, "y") is None
    assert field_list(headers, "vary") == ["accept", "accept-encoding", "cookie"]
