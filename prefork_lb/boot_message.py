"""Why a child could not boot, as it tells the master on the boot pipe (prefork_lb.child).

A message is one line, what the master prints as its error (``prefork_lb: error: LINE``),
then its detail, a traceback, each of its lines after a tab. The master prints the detail
above the line, once: every worker imports the same app at start-up and fails alike, and the
first failure stops the master (prefork_lb.supervisor), which kills the rest, so a worker that
printed its own traceback could be cut off halfway or print it a second time.

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


def first(data: bytes) -> tuple[str, str]:
    """The first message in what the boot pipe held: (its line, its detail); ("", "") for none.
    The detail is the traceback as Python printed it, ending in a newline."""
    lines = data.decode("utf-8", "replace").split("\n")
    starts = [i for i, text in enumerate(lines) if text.strip() and not text.startswith(DETAIL)]
    if not starts:
        return "", ""
    i = starts[0]
    detail: list[str] = []
    for text in lines[i + 1 :]:
        if not text.startswith(DETAIL):
            break
        detail.append(text[len(DETAIL) :] + "\n")
    return lines[i].strip(), "".join(detail)
