"""Loads tests/data/http-corpus/gunicorn (gunicorn's request-parsing corpus) for the tests.

The corpus is part of the repository (see tests/data/http-corpus/PROVENANCE.md), so a plain clone
runs every corpus test: :func:`load` fails loudly rather than returning nothing when it is missing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CORPUS = Path(__file__).resolve().parent / "data" / "http-corpus" / "gunicorn"

# Valid upstream cases we answer differently, on purpose. Each is allowed by RFC 9112.
DEVIATIONS = {
    # Transfer-Encoding together with Content-Length: refused outright (smuggling vector);
    # gunicorn 27 refuses it too.
    "valid/009": "CL and TE together",
    # Raw UTF-8 bytes in the request-target: llhttp refuses them; gunicorn 27 too.
    "valid/027": "raw non-ASCII bytes in the target",
    # Chunk extensions with whitespace around ';' (BWS): llhttp refuses them.
    "valid/013": "whitespace inside chunk extensions",
    # "-BLARGH" is a token, but llhttp only knows registered methods (GET, POST, ... PURGE,
    # QUERY: 46 of them); others are refused.
    "valid/031": "unregistered method",
}


@dataclass
class Case:
    name: str  # e.g. "valid/018"
    kind: str  # valid | invalid
    raw: bytes
    expect: dict[str, Any]

    @property
    def needs_host(self) -> bool:
        """An HTTP/1.1 request without Host: we refuse it by default (RFC 9112 section 3.2)."""
        return any(
            r["version"] == "HTTP/1.1" and not any(h[0] == "HOST" for h in r["headers"])
            for r in self.expect.get("requests", [])
        )


def load(kind: str) -> list[Case]:
    cases = sorted((CORPUS / kind).glob("*.http"))
    assert cases, f"no {kind} cases under {CORPUS}: the corpus ships with the tests"
    out = []
    for http in cases:
        exp = json.loads(http.with_suffix(".json").read_text())
        out.append(Case(f"{kind}/{http.stem}", kind, http.read_bytes(), exp))
    return out
