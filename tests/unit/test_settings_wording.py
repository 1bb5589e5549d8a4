"""Bad numbers in flags, environment variables and config files: one line in the user's terms
(never Python's "invalid literal for int() with base 10"), exit 2. Through cli.main, as a user
meets them, and the converters (prefork_lb.settings.base) branch by branch."""

from __future__ import annotations

from pathlib import Path

import pytest

from prefork_lb import cli
from prefork_lb.settings.base import finite_number, plain_reason, rss_limit, whole_number

APP = "tests.apps:hello"


@pytest.mark.parametrize(
    ("argv", "env", "conf", "line"),
    [
        (
            [APP, "--workers", "x"],
            {},
            None,
            "command line: invalid value 'x' for workers: expected a whole number",
        ),
        (
            [APP, "--max-requests", "1.5"],
            {},
            None,
            "command line: invalid value '1.5' for max_requests: expected a whole number",
        ),
        (
            [APP, "--timeout", "abc"],
            {},
            None,
            "command line: invalid value 'abc' for timeout: expected a number",
        ),
        (
            [APP, "--keep-alive", "nan"],
            {},
            None,
            "command line: invalid value 'nan' for keepalive: expected a number",
        ),
        (
            [APP, "--umask", "9x"],
            {},
            None,
            "command line: invalid value '9x' for umask: expected a whole number",
        ),
        (
            [APP, "--max-rss", "lots"],
            {},
            None,
            "command line: invalid value 'lots' for max_rss: expected MiB (a whole number) or a percentage such as 80%",
        ),
        (
            [APP],
            {"PREFORK_LB_WORKERS": "x"},
            None,
            "environment variable PREFORK_LB_WORKERS: invalid value 'x' for workers: expected a whole number",
        ),
        ([APP], {}, "workers = 1.5\n", "invalid value 1.5 for workers: expected a whole number"),
        ([APP], {}, "workers = [2]\n", "invalid value [2] for workers: expected a whole number"),
        (
            [APP],
            {},
            "graceful_timeout = 'soon'\n",
            "invalid value 'soon' for graceful_timeout: expected a number",
        ),
        (
            ["proxy", "--backends", "a:1", "--cache-size", "x"],
            {},
            None,
            "for cache_size: expected a whole number",
        ),
    ],
)
def test_a_bad_number_is_one_plain_line_and_exit_2(
    argv: list[str],
    env: dict[str, str],
    conf: str | None,
    line: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    if conf is not None:
        path = tmp_path / "conf.py"
        path.write_text(conf)
        argv = ["-c", str(path), *argv]
    with pytest.raises(SystemExit) as info:
        cli.main([*argv, "--check-config"])  # (a value taken by mistake exits 0: never serves)
    assert info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("prefork_lb: error: ") and err.endswith(line), err
    assert "int()" not in err and "float" not in err and "literal" not in err


def test_whole_number() -> None:
    assert whole_number(" 8 ") == 8 and whole_number(8) == 8 and whole_number(3.0) == 3
    for bad in ("x", "1.5", 1.5, True, None, [1]):
        with pytest.raises(ValueError, match="^expected a whole number$"):
            whole_number(bad)


def test_finite_number() -> None:
    assert finite_number("1.5") == 1.5 and finite_number(2) == 2.0 and finite_number(0.25) == 0.25
    for bad in ("abc", "nan", "inf", float("inf"), False, None, [1.0]):
        with pytest.raises(ValueError, match="^expected a number$"):
            finite_number(bad)


def test_plain_reason_rewrites_only_pythons_wording() -> None:
    assert (
        plain_reason(ValueError("invalid literal for int() with base 10: 'x'")) == "expected a whole number"
    )
    assert (
        plain_reason(ValueError("invalid literal for int() with base 0: '9x'")) == "expected a whole number"
    )
    assert plain_reason(TypeError("int() argument must be a string, not 'list'")) == "expected a whole number"
    assert plain_reason(ValueError("could not convert string to float: 'a'")) == "expected a number"
    assert plain_reason(TypeError("float() argument must be a string or a real number, not 'dict'")) == (
        "expected a number"
    )
    assert plain_reason(ValueError("must be at least 1, got 0")) == "must be at least 1, got 0"


def test_rss_limit_keeps_its_other_reasons() -> None:
    assert rss_limit("512") == 512 and rss_limit("80%") == "80%"
    with pytest.raises(ValueError, match="must be 0 or more"):
        rss_limit("-1")
