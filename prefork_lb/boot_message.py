"""Why a child could not boot, as it tells the master on the boot pipe (prefork_lb.child).

A message is one line, what the master prints as its error (``prefork_lb: error: LINE``),
then its detail, a traceback, each of its lines after a tab. The master prints the detail
above the line, once: every worker imports the same app at start-up and fails alike, and the
first failure stops the master (prefork_lb.supervisor), which kills the rest, so a worker that
printed its own traceback could be cut off halfway or print it a second time. The replacements
of a reload that fail (the app on disk fails) are not fatal: the master logs each with its own
message, taken in the order they came.

Invariants: a message is written with one ``os.write`` of at most PIPE_BUF bytes, which POSIX
makes atomic, so the messages of workers that fail at once never interleave (a traceback too
long for it loses its first lines, the import machinery's, not its last); its line never
starts with a tab, so where the next message starts is plain.
"""

from __future__ import annotations

import os
import select

MESSAGE_MAX = select.PIPE_BUF
DETAIL = "\t"  # what starts each line of a message's detail
CUT = "... (the start of the traceback is left out)"


def encode(line: str, detail: str = "") -> bytes:
    """One message: ``line``'s first line, then ``detail``'s lines, within MESSAGE_MAX bytes."""
    head = line.strip().split("\n")[0].strip()
    out = head.encode("utf-8", "replace")[: MESSAGE_MAX - 1] + b"\n"
    body = "".join(f"{DETAIL}{part}\n" for part in detail.rstrip("\n").split("\n")) if detail else ""
    data = body.encode("utf-8", "replace")
    room = MESSAGE_MAX - len(out)
    if len(data) > room:
        note = f"{DETAIL}{CUT}\n".encode()
        keep = data[len(data) - max(0, room - len(note)) :]
        start = keep.find(b"\n" + DETAIL.encode())  # the first whole line that fits
        data = note + keep[start + 1 :] if start >= 0 and room >= len(note) else b""
    return out + data


def write(fd: int, line: str, detail: str = "") -> None:
    """Send the master one message on the boot pipe's write end ``fd``."""
    os.write(fd, encode(line, detail))


def messages(data: bytes) -> list[tuple[str, str]]:
    """Every message in what the boot pipe held, in order: (its line, its detail). The detail
    is the traceback as Python printed it, ending in a newline."""
    out: list[tuple[str, str]] = []
    for text in data.decode("utf-8", "replace").split("\n"):
        if text.startswith(DETAIL):
            if out:  # (a detail line before any line: the rest of a message cut short)
                out[-1] = (out[-1][0], out[-1][1] + text[len(DETAIL) :] + "\n")
        elif text.strip():
            out.append((text.strip(), ""))
    return out


def first(data: bytes) -> tuple[str, str]:
    """The first message in what the boot pipe held: (its line, its detail); ("", "") for none."""
    found = messages(data)
    return found[0] if found else ("", "")
