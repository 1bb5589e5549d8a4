"""prefork_lb.proxy.cache_rules: a shared cache's rules, case by case from RFC 9111, 5861, 9211.

Each test names the section whose sentence it checks.
"""

from __future__ import annotations

import pytest

from prefork_lb.proxy.cache_directives import format_http_date
from prefork_lb.proxy.cache_rules import (
    Use,
    age_header,
    bypass_reason,
    cache_status,
    current_age,
    freshness_lifetime,
    not_modified_headers,
    not_storable_reason,
    revalidation_headers,
    secondary_key,
    should_answer_not_modified,
    stale_if_error_allows,
    storable,
    stored_headers,
    update_from_not_modified,
    usability,
    validates,
    vary_names,
)

T0 = 1_700_000_000.0
DATE = format_http_date(T0)
LM = format_http_date(T0 - 3600)


def h(**fields: str) -> list[tuple[str, bytes]]:
    return [(k.replace("_", "-"), v.encode("latin-1")) for k, v in fields.items()]


def why(
    res: list[tuple[str, bytes]],
    req: list[tuple[str, bytes]] | None = None,
    status: int = 200,
    method: str = "GET",
) -> str | None:
    return not_storable_reason(method, req or [], status, res)


# -- bypass ---------------------------------------------------------------------------------


def test_rfc9111_3_only_get_and_head_use_the_cache() -> None:
    assert bypass_reason("POST", []) == "method"
    assert bypass_reason("GET", []) is None
    assert bypass_reason("HEAD", []) is None


def test_request_with_body_upgrade_or_range_bypasses() -> None:
    assert bypass_reason("GET", h(content_length="3")) == "body"
    assert bypass_reason("GET", h(content_length="0")) is None
    assert bypass_reason("GET", h(transfer_encoding="chunked")) == "body"
    assert bypass_reason("GET", h(upgrade="websocket")) == "upgrade"
    assert bypass_reason("GET", h(range="bytes=0-1")) == "range"


# -- storing (section 3) ----------------------------------------------------------------------


def test_rfc9111_3_explicit_max_age_is_storable() -> None:
    assert storable("GET", [], 200, h(cache_control="max-age=60"))


def test_rfc9111_3_expires_s_maxage_or_public_make_it_storable() -> None:
    assert why(h(expires=DATE.decode())) is None
    assert why(h(cache_control="s-maxage=5")) is None
    assert why(h(cache_control="public")) is None


def test_rfc9111_3_head_storable_other_methods_not() -> None:
    assert why(h(cache_control="max-age=1"), method="HEAD") is None
    assert why(h(cache_control="max-age=1"), method="POST") == "method"


def test_rfc9111_4_2_2_no_heuristic_freshness_means_not_stored() -> None:
    assert why(h(last_modified=LM.decode())) == "no explicit freshness"
    assert why([]) == "no explicit freshness"


def test_rfc9111_5_2_2_4_no_cache_with_validator_is_stored_for_revalidation() -> None:
    assert why(h(cache_control="no-cache", etag='"a"')) is None
    assert why(h(cache_control="no-cache", last_modified=LM.decode())) is None
    assert why(h(cache_control="no-cache")) == "no explicit freshness"


def test_rfc9111_3_status_must_be_understood() -> None:
    assert why(h(cache_control="max-age=1"), status=206) == "status"
    assert why(h(cache_control="max-age=1"), status=304) == "status"
    assert why(h(cache_control="max-age=1"), status=500) == "status"
    assert why(h(cache_control="max-age=1"), status=404) is None


def test_rfc9111_5_2_2_5_response_no_store() -> None:
    assert why(h(cache_control="no-store, max-age=60")) == "no-store"


def test_rfc9111_5_2_2_3_must_understand_overrides_no_store_for_understood_status() -> None:
    assert why(h(cache_control="must-understand, no-store, max-age=5")) is None
    assert why(h(cache_control="must-understand, no-store, max-age=5"), status=299) == "status"


def test_rfc9111_5_2_1_5_request_no_store() -> None:
    assert why(h(cache_control="max-age=60"), h(cache_control="no-store")) == "request no-store"


def test_rfc9111_5_2_2_7_private_never_in_a_shared_cache_qualified_or_not() -> None:
    assert why(h(cache_control="private, max-age=60")) == "private"
    assert why(h(cache_control='private="x-user", max-age=60')) == "private"


def test_rfc9111_3_5_authorization_needs_public_s_maxage_or_must_revalidate() -> None:
    auth = h(authorization="Basic eDp5")
    assert why(h(cache_control="max-age=60"), auth) == "authorization"
    assert why(h(cache_control="max-age=60, public"), auth) is None
    assert why(h(cache_control="s-maxage=60"), auth) is None
    assert why(h(cache_control="max-age=60, must-revalidate"), auth) is None


def test_set_cookie_is_never_stored() -> None:
    """Our choice: a response that sets a cookie is not stored at all (not stripped)."""
    assert why(h(cache_control="public, max-age=60", set_cookie="s=1")) == "set-cookie"


def test_rfc9111_4_1_vary_star_is_not_stored() -> None:
    assert why(h(cache_control="max-age=60", vary="Accept, *")) == "vary *"


def test_rfc9111_3_1_hop_by_hop_and_connection_named_fields_are_not_stored() -> None:
    res = h(connection="x-trace", keep_alive="5", x_trace="1", proxy_authenticate="B", etag='"a"')
    assert stored_headers(res) == [("etag", b'"a"')]


# -- freshness lifetime (4.2.1) ---------------------------------------------------------------


def test_rfc9111_4_2_1_s_maxage_wins_over_max_age_and_expires() -> None:
    res = h(cache_control="max-age=10, s-maxage=20", expires=format_http_date(T0 + 99).decode())
    assert freshness_lifetime(res, T0) == 20


def test_rfc9111_4_2_1_max_age_wins_over_expires() -> None:
    res = h(cache_control="max-age=10", expires=format_http_date(T0 + 99).decode())
    assert freshness_lifetime(res, T0) == 10


def test_rfc9111_4_2_1_expires_minus_date() -> None:
    res = h(date=DATE.decode(), expires=format_http_date(T0 + 30).decode())
    assert freshness_lifetime(res, T0 + 5) == 30


def test_rfc9111_4_2_1_expires_minus_response_time_without_date() -> None:
    assert freshness_lifetime(h(expires=format_http_date(T0 + 30).decode()), T0 + 10) == 20


def test_rfc9111_4_2_1_expires_before_date_is_zero() -> None:
    res = h(date=DATE.decode(), expires=format_http_date(T0 - 30).decode())
    assert freshness_lifetime(res, T0) == 0


def test_rfc9111_5_3_invalid_expires_is_in_the_past() -> None:
    assert freshness_lifetime(h(expires="0"), T0) == 0


def test_rfc9111_5_2_duplicate_expires_is_stale() -> None:
    res = [("expires", format_http_date(T0 + 10)), ("expires", format_http_date(T0 + 20))]
    assert freshness_lifetime(res, T0) == 0
    same = [("expires", format_http_date(T0 + 10)), ("expires", format_http_date(T0 + 10))]
    assert freshness_lifetime(same, T0) == 10


def test_rfc9111_5_2_invalid_max_age_is_stale_even_with_expires() -> None:
    res = h(cache_control="max-age=ten", expires=format_http_date(T0 + 99).decode())
    assert freshness_lifetime(res, T0) == 0


def test_rfc9111_4_2_2_no_explicit_lifetime_is_zero() -> None:
    assert freshness_lifetime(h(last_modified=LM.decode()), T0) == 0


# -- age (4.2.3) --------------------------------------------------------------------------------


def test_rfc9111_4_2_3_age_is_resident_time_plus_response_delay() -> None:
    res = h(date=format_http_date(T0).decode())
    assert current_age(res, T0 - 1, T0, T0 + 10) == 11


def test_rfc9111_4_2_3_age_header_adds_to_it() -> None:
    res = h(date=format_http_date(T0).decode(), age="100")
    assert current_age(res, T0, T0, T0 + 5) == 105


def test_rfc9111_4_2_3_apparent_age_from_date_when_larger() -> None:
    res = h(date=format_http_date(T0 - 50).decode(), age="10")
    assert current_age(res, T0, T0, T0) == 50


def test_rfc9111_4_2_3_date_in_the_future_gives_no_negative_apparent_age() -> None:
    assert current_age(h(date=format_http_date(T0 + 50).decode()), T0, T0, T0 + 1) == 1


def test_rfc9111_4_2_3_no_date_uses_response_time() -> None:
    assert current_age([], T0, T0, T0 + 3) == 3


def test_rfc9111_5_1_invalid_age_is_the_largest_age() -> None:
    assert current_age(h(age="old"), T0, T0, T0) >= 2**31


def test_rfc9111_5_1_age_header_value_whole_seconds_capped() -> None:
    assert age_header(12.9) == b"12"
    assert age_header(-1) == b"0"
    assert age_header(1e12) == b"2147483648"


# -- fresh or stale (4.2, 4.2.4, 5.2.1, RFC 5861) -------------------------------------------


def use(res: str, age: float, lifetime: float = 60, req: str | None = None, pragma: str | None = None) -> Use:
    request = h(cache_control=req) if req is not None else []
    if pragma is not None:
        request += h(pragma=pragma)
    return usability(request, h(cache_control=res) if res else [], lifetime, age)


def test_rfc9111_4_2_fresh_when_lifetime_exceeds_age() -> None:
    assert use("max-age=60", 59) is Use.FRESH
    assert use("max-age=60", 60, 60) is Use.REVALIDATE


def test_rfc9111_5_2_2_4_response_no_cache_always_revalidates() -> None:
    assert use("no-cache, max-age=60", 0) is Use.REVALIDATE
    assert use('no-cache="set-cookie", max-age=60', 0) is Use.REVALIDATE


def test_rfc9111_5_2_1_4_request_no_cache_revalidates() -> None:
    assert use("max-age=60", 0, req="no-cache") is Use.REVALIDATE


def test_rfc9111_5_4_pragma_no_cache_only_without_cache_control() -> None:
    assert use("max-age=60", 0, pragma="no-cache") is Use.REVALIDATE
    assert use("max-age=60", 0, req="max-stale", pragma="no-cache") is Use.FRESH


def test_rfc9111_5_2_1_1_request_max_age_bounds_age() -> None:
    assert use("max-age=60", 10, req="max-age=5") is Use.REVALIDATE
    assert use("max-age=60", 5, req="max-age=5") is Use.FRESH


def test_rfc9111_5_2_invalid_request_max_age_reads_as_zero() -> None:
    assert use("max-age=60", 1, req="max-age=x") is Use.REVALIDATE


def test_rfc9111_5_2_1_3_min_fresh() -> None:
    assert use("max-age=60", 50, req="min-fresh=20") is Use.REVALIDATE
    assert use("max-age=60", 40, req="min-fresh=20") is Use.FRESH
    assert use("max-age=60", 40, req="min-fresh=bad") is Use.FRESH


def test_rfc9111_5_2_1_2_max_stale_with_and_without_value() -> None:
    assert use("max-age=60", 70, req="max-stale=10") is Use.STALE_OK
    assert use("max-age=60", 71, req="max-stale=10") is Use.REVALIDATE
    assert use("max-age=60", 10_000, req="max-stale") is Use.STALE_OK
    assert use("max-age=60", 61, req="max-stale=soon") is Use.REVALIDATE


def test_rfc9111_4_2_4_must_revalidate_forbids_stale() -> None:
    assert use("max-age=60, must-revalidate", 61, req="max-stale") is Use.REVALIDATE


def test_rfc9111_5_2_2_8_proxy_revalidate_forbids_stale_in_shared_cache() -> None:
    assert use("max-age=60, proxy-revalidate", 61, req="max-stale") is Use.REVALIDATE


def test_rfc9111_5_2_2_10_s_maxage_implies_proxy_revalidate() -> None:
    assert use("s-maxage=60", 61, req="max-stale") is Use.REVALIDATE


def test_rfc5861_3_stale_while_revalidate_window() -> None:
    assert use("max-age=60, stale-while-revalidate=30", 90) is Use.STALE_WHILE_REVALIDATE
    assert use("max-age=60, stale-while-revalidate=30", 91) is Use.REVALIDATE
    assert use("max-age=60, stale-while-revalidate=x", 61) is Use.REVALIDATE
    assert use("max-age=60, stale-while-revalidate=30, must-revalidate", 61) is Use.REVALIDATE


def test_rfc5861_4_stale_if_error_from_response_or_request() -> None:
    res = h(cache_control="max-age=60, stale-if-error=100")
    assert stale_if_error_allows([], res, 60, 160)
    assert not stale_if_error_allows([], res, 60, 161)
    assert not stale_if_error_allows(h(cache_control="stale-if-error=5"), res, 60, 70)
    plain = h(cache_control="max-age=60")
    assert stale_if_error_allows(h(cache_control="stale-if-error=50"), plain, 60, 70)
    assert not stale_if_error_allows([], plain, 60, 61)
    assert not stale_if_error_allows([], h(cache_control="max-age=1, stale-if-error=z"), 1, 2)


def test_rfc9111_4_2_4_stale_if_error_never_overrides_must_revalidate_or_no_cache() -> None:
    for cc in ("max-age=1, must-revalidate", "s-maxage=1", "no-cache, max-age=1"):
        assert not stale_if_error_allows([], h(cache_control=cc + ", stale-if-error=99"), 1, 2)


# -- Vary (4.1) ---------------------------------------------------------------------------------


def test_rfc9111_4_1_vary_names_sorted_lowercase_star_is_none() -> None:
    assert vary_names(h(vary="Accept-Encoding, accept")) == ("accept", "accept-encoding")
    assert vary_names(h(vary="*")) is None
    assert vary_names([]) == ()


def test_rfc9111_4_1_secondary_key_normalises_whitespace_and_lines() -> None:
    a = [("accept-encoding", b"GZIP,  br"), ("accept-language", b"en  GB")]
    b = [("accept-encoding", b"gzip"), ("accept-encoding", b" br"), ("accept-language", b"en GB")]
    names = ("accept-encoding", "accept-language")
    assert secondary_key(names, a) == secondary_key(names, b) == ("gzip,br", "en GB")


def test_rfc9111_4_1_absent_matches_only_absent() -> None:
    names = ("accept",)
    assert secondary_key(names, []) == (None,)
    assert secondary_key(names, h(accept="")) == ("",)
    assert secondary_key(names, []) != secondary_key(names, h(accept=""))


def test_rfc9111_4_1_case_kept_for_case_sensitive_fields() -> None:
    assert secondary_key(("x-user",), h(x_user="Ann")) != secondary_key(("x-user",), h(x_user="ann"))


# -- conditional requests answered from the cache (RFC 9110 13) -----------------------------


STORED = h(etag='W/"v1"', last_modified=LM.decode(), date=DATE.decode(), content_type="text/plain")


def nm(req: list[tuple[str, bytes]], status: int = 200, method: str = "GET") -> bool:
    return should_answer_not_modified(method, req, status, STORED)


def test_rfc9110_13_1_2_if_none_match_weak_comparison() -> None:
    assert nm(h(if_none_match='"v1"'))
    assert nm(h(if_none_match='"x", W/"v1"'))
    assert not nm(h(if_none_match='"v2"'))


def test_rfc9110_13_1_2_if_none_match_star_and_multiple_lines() -> None:
    assert nm(h(if_none_match="*"))
    assert nm([("if-none-match", b'"a"'), ("if-none-match", b'"v1"')])


def test_rfc9110_13_1_2_malformed_if_none_match_gives_200() -> None:
    assert not nm(h(if_none_match="v1"))
    assert not nm(h(if_none_match='"v1" junk'))


def test_rfc9110_13_1_2_stored_without_etag_never_matches_a_tag() -> None:
    assert not should_answer_not_modified("GET", h(if_none_match='"v1"'), 200, [])


def test_rfc9110_13_1_3_if_none_match_present_ignores_if_modified_since() -> None:
    assert not nm(h(if_none_match='"v2"', if_modified_since=DATE.decode()))


def test_rfc9110_13_1_3_if_modified_since_against_last_modified() -> None:
    assert nm(h(if_modified_since=LM.decode()))
    assert nm(h(if_modified_since=DATE.decode()))
    assert not nm(h(if_modified_since=format_http_date(T0 - 7200).decode()))
    assert not nm(h(if_modified_since="not a date"))
    assert not should_answer_not_modified("GET", h(if_modified_since=DATE.decode()), 200, [])


def test_rfc9110_13_2_1_only_for_2xx_and_get_head() -> None:
    assert not nm(h(if_none_match="*"), status=404)
    assert not nm(h(if_none_match="*"), method="POST")
    assert nm(h(if_none_match="*"), method="HEAD")


def test_rfc9110_15_4_5_not_modified_carries_the_listed_fields() -> None:
    stored = STORED + h(cache_control="max-age=5", vary="accept", expires=DATE.decode())
    names = {n for n, _ in not_modified_headers(stored)}
    assert names == {"etag", "last-modified", "date", "cache-control", "vary", "expires"}


# -- revalidation (4.3) -------------------------------------------------------------------------


def test_rfc9111_4_3_1_revalidation_sends_stored_validators_not_clients() -> None:
    req = h(accept="*/*", if_none_match='"client"', if_modified_since=DATE.decode(), if_range='"r"')
    out = revalidation_headers(req, STORED)
    assert out == [("accept", b"*/*"), ("if-none-match", b'W/"v1"'), ("if-modified-since", LM)]


def test_rfc9111_4_3_1_revalidation_without_validators_is_plain() -> None:
    assert revalidation_headers(h(accept="a"), h(date=DATE.decode())) == [("accept", b"a")]


def test_rfc9111_4_3_4_strong_etag_selects_same_strong_etag() -> None:
    assert validates(h(etag='"a"'), h(etag='"a"'))
    assert not validates(h(etag='"a"'), h(etag='"b"'))
    assert not validates(h(etag='W/"a"'), h(etag='"a"'))
    assert not validates([], h(etag='"a"'))
    assert not validates(h(etag="a"), h(etag='"a"'))  # a malformed stored ETag is no validator


def test_rfc9111_4_3_4_weak_etag_uses_weak_comparison() -> None:
    assert validates(h(etag='"a"'), h(etag='W/"a"'))
    assert validates(h(etag='W/"a"'), h(etag='W/"a"'))


def test_rfc9111_4_3_4_last_modified_selects_same_date() -> None:
    assert validates(h(last_modified=LM.decode()), h(last_modified=LM.decode()))
    assert not validates(h(last_modified=LM.decode()), h(last_modified=DATE.decode()))


def test_rfc9111_4_3_4_no_validator_selects_the_revalidated_response() -> None:
    assert validates(h(etag='"a"'), h(date=DATE.decode()))


def test_rfc9111_3_2_update_replaces_fields_except_content_length() -> None:
    stored = h(etag='"a"', cache_control="max-age=5", content_length="10", x_a="1")
    new = h(cache_control="max-age=50", content_length="0", date=DATE.decode(), connection="x")
    out = update_from_not_modified(stored, new)
    assert ("cache-control", b"max-age=50") in out
    assert ("cache-control", b"max-age=5") not in out
    assert ("content-length", b"10") in out and ("content-length", b"0") not in out
    assert ("date", DATE) in out and ("x-a", b"1") in out
    assert all(n != "connection" for n, _ in out)


# -- Cache-Status (RFC 9211) --------------------------------------------------------------------


def test_rfc9211_2_1_hit_with_ttl() -> None:
    assert cache_status(hit=True, ttl=42.7) == b"prefork_lb; hit; ttl=42"


def test_rfc9211_2_4_negative_ttl_when_stale() -> None:
    assert cache_status(hit=True, ttl=-3) == b"prefork_lb; hit; ttl=-3"


def test_rfc9211_2_2_fwd_reasons_with_status_stored_collapsed() -> None:
    assert cache_status(fwd="uri-miss", stored=True) == b"prefork_lb; fwd=uri-miss; stored"
    value = cache_status(fwd="stale", fwd_status=304, collapsed=True)
    assert value == b"prefork_lb; fwd=stale; fwd-status=304; collapsed"
    assert cache_status(fwd="miss") == b"prefork_lb; fwd=miss"


def test_rfc9211_2_8_detail_is_an_sf_string() -> None:
    assert cache_status(fwd="bypass", detail='a"b') == b'prefork_lb; fwd=bypass; detail="a\\"b"'


def test_rfc9211_hit_and_fwd_are_exclusive_and_reasons_known() -> None:
    with pytest.raises(ValueError):
        cache_status()
    with pytest.raises(ValueError):
        cache_status(hit=True, fwd="miss")
    with pytest.raises(ValueError):
        cache_status(fwd="nope")
