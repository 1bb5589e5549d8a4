"""Coverage-guided fuzzing of the request path with atheris (libFuzzer), when it installs.

Not a pytest module: run it by hand, from the repository root.

    pip install atheris
    python -m tests.fuzz_atheris -atheris_runs=1000000            # parser and proxy path
    python -m tests.fuzz_atheris -atheris_runs=1000000 corpus_dir  # keep what it finds

Each input is split in two at a position taken from its first byte, then fed to the strict
request parser and, through fake transports, to the proxy's client connection (the same
checks as tests/unit/proxy/test_fuzz.py): no exception other than an HTTPError with a 4xx or
501, no 5xx of the proxy's own for a client's error, and nothing a strict parser refuses ever
forwarded to a backend. A failure makes libFuzzer stop and write the input to crash-*.
"""

from __future__ import annotations

import asyncio
import sys

import atheris

with atheris.instrument_imports():
    from prefork_lb.http.errors import HTTPError
    from prefork_lb.http.parser import Limits, RequestParser
    from tests.unit.proxy import test_fuzz as test_proxy_fuzz

LOOP = asyncio.new_event_loop()


def one_input(data: bytes) -> None:
    if not data:
        return
    cut = data[0] % len(data)
    chunks = [data[1 : cut + 1], data[cut + 1 :]]
    parser = RequestParser(Limits(require_host=False))
    try:
        for chunk in chunks:
            parser.feed(chunk)
    except HTTPError as exc:
        assert 400 <= exc.status < 500 or exc.status == 501, exc.status
    test_proxy_fuzz.check(LOOP, chunks)


def main() -> None:
    argv = list(sys.argv)
    if not any(not a.startswith("-") for a in argv[1:]):
        # No corpus directory given: seed one with the shared corpus's requests, so the fuzzer
        # starts from real HTTP instead of rediscovering "GET " byte by byte.
        import tempfile
        from pathlib import Path

        from tests.corpus import load

        seeds = Path(tempfile.mkdtemp(prefix="prefork_lb-atheris-"))
        for i, case in enumerate(load("valid") + load("invalid")):
            (seeds / f"seed-{i}").write_bytes(bytes([len(case.raw) // 2 % 256]) + case.raw)
        argv.append(str(seeds))
    atheris.Setup(argv, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
