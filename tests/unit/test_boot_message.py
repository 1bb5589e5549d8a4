"""The boot pipe's messages (prefork_lb.boot_message): what a child that cannot boot tells the
master, and what the master makes of several at once."""

from __future__ import annotations

import os

from prefork_lb import boot_message
from prefork_lb.boot_message import CUT, MESSAGE_MAX, encode, first

TRACEBACK = (
    "Traceback (most recent call last):\n"
    '  File "/srv/app.py", line 1, in <module>\n'
    "    x = 1 / 0\n"
    "        ~~^~~\n"
    "ZeroDivisionError: division by zero\n"
)


def test_a_line_and_its_traceback_come_back_as_written() -> None:
    assert first(encode("the app failed to import: ZeroDivisionError", TRACEBACK)) == (
        "the app failed to import: ZeroDivisionError",
        TRACEBACK,
    )


def test_a_line_alone_is_the_one_line_protocol() -> None:
    assert encode("--mount /: module 'x' not found") == b"--mount /: module 'x' not found\n"
    assert first(b"cannot switch to --user/--group: nobody\n") == (
        "cannot switch to --user/--group: nobody",
        "",
    )
    assert first(b"") == ("", "") and first(b"\n\n") == ("", "")


def test_of_several_workers_failing_at_once_the_first_message_is_read() -> None:
    data = encode("first line", TRACEBACK) + encode("second line", "Traceback (most recent call last):\nX\n")
    assert first(data) == ("first line", TRACEBACK)


def test_a_line_of_several_lines_keeps_its_first() -> None:
    # str(exc) may hold newlines: the master's line is the first, the traceback still follows.
    assert first(encode("the app failed: ValueError: one\ntwo", TRACEBACK)) == (
        "the app failed: ValueError: one",
        TRACEBACK,
    )


def test_a_long_traceback_fits_one_atomic_write_and_keeps_its_last_lines() -> None:
    frames = "".join(
        f'  File "/srv/mod{i}.py", line {i}, in <module>\n    import mod{i + 1}\n' for i in range(400)
    )
    long = "Traceback (most recent call last):\n" + frames + "ImportError: cannot import name 'x'\n"
    data = encode("the app failed to import: ImportError: cannot import name 'x'", long)
    assert len(data) <= MESSAGE_MAX
    line, detail = first(data)
    assert line == "the app failed to import: ImportError: cannot import name 'x'"
    assert detail.startswith(CUT + "\n") and detail.endswith("ImportError: cannot import name 'x'\n")
    assert '  File "/srv/mod399.py", line 399, in <module>\n' in detail  # whole lines only
    assert all(part.startswith(("  ", "ImportError", CUT)) for part in detail.splitlines())


def test_write_puts_one_message_on_the_pipe() -> None:
    r, w = os.pipe()
    try:
        boot_message.write(w, "the app failed to import: ZeroDivisionError", TRACEBACK)
        data = os.read(r, 65536)
    finally:
        os.close(r)
        os.close(w)
    assert first(data) == ("the app failed to import: ZeroDivisionError", TRACEBACK)


def test_messages_gives_every_worker_its_own_message_in_order() -> None:
    other = "Traceback (most recent call last):\nX\n"
    data = encode("first line", TRACEBACK) + encode("second line", other) + encode("third line")
    assert boot_message.messages(data) == [
        ("first line", TRACEBACK),
        ("second line", other),
        ("third line", ""),
    ]
    assert boot_message.messages(b"") == []
