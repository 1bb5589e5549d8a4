"""The offload pool's wire format: what a parent and one of its pool processes say to each other.

Pure: no sockets, no processes, stdlib only (the pool process imports it, and nothing else of
prefork_lb). Both sides frame every message the same way:

    header ``!QQB`` (17 bytes) = payload length, task id, code;  then the payload (pickled)

Parent -> child, ``code`` is a kind:
- ``KIND_PREPARE`` (task id 0): the payload is the dict ``multiprocessing.spawn.prepare`` takes
  (``sys_path``, ``init_main_from_name`` / ``init_main_from_path``); sent once, first, no answer;
- ``KIND_TASK``: the payload is ``(fn, args, kwargs)``; exactly one response frame comes back.

Child -> parent, ``code`` is a status and the task id is the task's:
- ``STATUS_OK``: the payload is the pickled result;
- ``STATUS_ERROR``: the payload is ``(traceback_text, pickled_exception_or_None)``; the exception
  is pickled on its own so that one that cannot be pickled (or unpickled) still brings its
  traceback back.

Invariants: a frame is complete once ``HEADER.size + length`` bytes are buffered; task ids are
positive (0 is the preparation's); whatever follows a frame in a buffer is left in place.
"""

from __future__ import annotations

import pickle
import struct
import traceback
from collections.abc import Callable
from typing import Any

HEADER = struct.Struct("!QQB")
KIND_TASK = 0
KIND_PREPARE = 1
STATUS_OK = 0
STATUS_ERROR = 1

_PROTOCOL = pickle.HIGHEST_PROTOCOL


def frame(payload: bytes, task_id: int, code: int) -> bytes:
    """One message: the header, then ``payload``."""
    return HEADER.pack(len(payload), task_id, code) + payload


def parse_header(data: bytes) -> tuple[int, int, int]:
    """``(length, task_id, code)`` from exactly ``HEADER.size`` bytes."""
    length: int
    task_id: int
    code: int
    length, task_id, code = HEADER.unpack(data)
    return length, task_id, code


def frame_ready(buffer: bytes | bytearray) -> bool:
    """True when ``buffer`` starts with a whole frame."""
    if len(buffer) < HEADER.size:
        return False
    length: int = HEADER.unpack_from(buffer)[0]
    return len(buffer) >= HEADER.size + length


def pop_frame(buffer: bytearray) -> tuple[int, int, bytes]:
    """Remove the whole frame ``buffer`` starts with (see ``frame_ready``); returns
    ``(task_id, code, payload)``. Bytes after it stay in ``buffer``."""
    length: int
    task_id: int
    code: int
    length, task_id, code = HEADER.unpack_from(buffer)
    end = HEADER.size + length
    payload = bytes(buffer[HEADER.size : end])
    del buffer[:end]
    return task_id, code, payload


def describe(fn: Any) -> str:
    """A callable's name for messages: ``module.qualname`` where it has them."""
    name = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None)
    module = getattr(fn, "__module__", None)
    if name:
        return f"{module}.{name}" if module else str(name)
    return repr(fn)


def dumps_task(fn: Callable[..., Any], fn_name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> bytes:
    """The payload of a task; a TypeError naming the part (function or which argument) that
    cannot be pickled."""
    try:
        return pickle.dumps((fn, args, kwargs), protocol=_PROTOCOL)
    except Exception as exc:
        parts: list[tuple[str, Any]] = [(f"the function {fn_name}", fn)]
        parts += [(f"argument {i} of {fn_name}", a) for i, a in enumerate(args)]
        parts += [(f"keyword argument {k!r} of {fn_name}", v) for k, v in kwargs.items()]
        for what, obj in parts:
            try:
                pickle.dumps(obj, protocol=_PROTOCOL)
            except Exception as part_exc:
                raise TypeError(f"offload: cannot pickle {what}: {part_exc}") from part_exc
        raise TypeError(f"offload: cannot pickle the call to {fn_name}: {exc}") from exc


def loads_task(payload: bytes) -> tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]]:
    """``(fn, args, kwargs)`` from a task payload (unpickling imports the function's module)."""
    fn, args, kwargs = pickle.loads(payload)
    return fn, args, kwargs


def dumps_preparation(data: dict[str, Any]) -> bytes:
    """The payload of the ``KIND_PREPARE`` frame."""
    return pickle.dumps(data)


def loads_preparation(payload: bytes) -> dict[str, Any]:
    data: dict[str, Any] = pickle.loads(payload)
    return data


def dumps_result(result: Any) -> bytes:
    """The payload of a ``STATUS_OK`` frame; raises what pickle raises."""
    return pickle.dumps(result, protocol=_PROTOCOL)


def loads_result(payload: bytes) -> Any:
    """The result from a ``STATUS_OK`` payload; raises what unpickling raises."""
    return pickle.loads(payload)


def dumps_error(exc: BaseException) -> bytes:
    """The payload of a ``STATUS_ERROR`` frame: the formatted traceback, and the exception
    pickled on its own (None where it cannot be)."""
    tb_text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    try:
        exc_bytes: bytes | None = pickle.dumps(exc, protocol=_PROTOCOL)
    except Exception:
        exc_bytes = None
    return pickle.dumps((tb_text, exc_bytes), protocol=_PROTOCOL)


def loads_error(payload: bytes) -> tuple[str, BaseException | None]:
    """``(traceback_text, exception)`` from a ``STATUS_ERROR`` payload; the exception is None
    where it was not sent or does not unpickle to an exception."""
    tb_text, exc_bytes = pickle.loads(payload)
    try:
        error = pickle.loads(exc_bytes) if exc_bytes is not None else None
    except Exception:
        error = None
    return str(tb_text), error if isinstance(error, BaseException) else None
