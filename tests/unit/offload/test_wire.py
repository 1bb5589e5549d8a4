"""The offload wire format by itself: frames (fed whole, byte by byte, with trailing data), task
payloads and the names in their pickling errors, result and error payloads."""

from __future__ import annotations

import pickle
import struct
import threading
from typing import Any

import pytest

from prefork_lb.offload import wire


def add(a: int, b: int = 0) -> int:
    return a + b


class Unpicklable(Exception):
    def __reduce__(self) -> tuple[Any, ...]:
        raise TypeError("not this one")


class BadUnpickle(Exception):
    """Pickles, but unpickling fails (its __init__ needs two arguments)."""

    def __init__(self, a: object, b: object) -> None:
        super().__init__(a)


def test_header_layout_is_length_task_id_code_big_endian() -> None:
    data = wire.frame(b"xyz", 7, wire.KIND_TASK)
    assert wire.HEADER.size == 17
    assert data == struct.pack("!QQB", 3, 7, 0) + b"xyz"
    assert wire.parse_header(data[:17]) == (3, 7, wire.KIND_TASK)
    assert (wire.KIND_TASK, wire.KIND_PREPARE, wire.STATUS_OK, wire.STATUS_ERROR) == (0, 1, 0, 1)


@pytest.mark.parametrize("payload", [b"", b"p", b"payload" * 1000])
def test_frame_whole(payload: bytes) -> None:
    buffer = bytearray(wire.frame(payload, 42, wire.STATUS_ERROR))
    assert wire.frame_ready(buffer)
    assert wire.pop_frame(buffer) == (42, wire.STATUS_ERROR, payload)
    assert buffer == b""
    assert not wire.frame_ready(buffer)


@pytest.mark.parametrize("payload", [b"", b"p", b"payload" * 10])
def test_frame_byte_by_byte(payload: bytes) -> None:
    data = wire.frame(payload, 3, wire.STATUS_OK)
    buffer = bytearray()
    for i, byte in enumerate(data):
        assert not wire.frame_ready(buffer), f"ready after {i} of {len(data)} bytes"
        buffer.append(byte)
    assert wire.frame_ready(buffer)
    assert wire.pop_frame(buffer) == (3, wire.STATUS_OK, payload)


def test_frame_with_trailing_data_leaves_it() -> None:
    first, second = wire.frame(b"one", 1, wire.STATUS_OK), wire.frame(b"two", 2, wire.STATUS_OK)
    buffer = bytearray(first + second[:5])
    assert wire.frame_ready(buffer)
    assert wire.pop_frame(buffer) == (1, wire.STATUS_OK, b"one")
    assert buffer == second[:5]
    assert not wire.frame_ready(buffer)
    buffer += second[5:]
    assert wire.pop_frame(buffer) == (2, wire.STATUS_OK, b"two")


def test_frame_ready_takes_bytes_too() -> None:
    data = wire.frame(b"abc", 1, wire.KIND_TASK)
    assert wire.frame_ready(data)
    assert not wire.frame_ready(data[:-1])


def test_task_round_trip() -> None:
    payload = wire.dumps_task(add, "add", (1,), {"b": 2})
    fn, args, kwargs = wire.loads_task(payload)
    assert fn is add and fn(*args, **kwargs) == 3


def test_task_pickling_errors_name_the_part() -> None:
    lock = threading.Lock()
    with pytest.raises(TypeError, match="cannot pickle the function f: "):
        wire.dumps_task(lambda: 1, "f", (), {})
    with pytest.raises(TypeError, match="cannot pickle argument 1 of add: "):
        wire.dumps_task(add, "add", (1, lock), {})
    with pytest.raises(TypeError, match="cannot pickle keyword argument 'b' of add: "):
        wire.dumps_task(add, "add", (1,), {"b": lock})


def test_describe() -> None:
    assert wire.describe(add) == f"{__name__}.add"
    assert wire.describe(abs) == "builtins.abs"
    assert wire.describe(Unpicklable) == f"{__name__}.Unpicklable"
    assert wire.describe(42) == "42"


def test_result_and_preparation_round_trip() -> None:
    assert wire.loads_result(wire.dumps_result({"a": [1, 2]})) == {"a": [1, 2]}
    with pytest.raises(TypeError):
        wire.dumps_result(threading.Lock())
    data = {"sys_path": ["/x"], "init_main_from_name": "m"}
    assert wire.loads_preparation(wire.dumps_preparation(data)) == data


def raise_value_error() -> None:
    raise ValueError("boom")


def test_error_round_trip_keeps_exception_and_traceback() -> None:
    try:
        raise_value_error()
    except ValueError as exc:
        payload = wire.dumps_error(exc)
    tb_text, error = wire.loads_error(payload)
    assert isinstance(error, ValueError) and error.args == ("boom",)
    assert "in raise_value_error" in tb_text and "ValueError: boom" in tb_text


def test_error_that_cannot_be_pickled_still_brings_its_traceback() -> None:
    tb_text, error = wire.loads_error(wire.dumps_error(Unpicklable("x")))
    assert error is None and "Unpicklable: x" in tb_text


def test_error_that_cannot_be_unpickled_still_brings_its_traceback() -> None:
    tb_text, error = wire.loads_error(wire.dumps_error(BadUnpickle("a", "b")))
    assert error is None and "BadUnpickle: a" in tb_text


def test_error_payload_that_is_not_an_exception_gives_none() -> None:
    payload = pickle.dumps(("tb", pickle.dumps("not an exception")))
    assert wire.loads_error(payload) == ("tb", None)
