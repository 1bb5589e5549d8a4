"""WSGI apps for the integration tests: ``python -m prefork_lb tests.apps:NAME``.

Every value an app reports is a latin-1 string (PEP 3333 puts bytes in the environ that way),
so a test can compare with gunicorn's corpus, which stores bytes the same way.

If the environment variable PREFORK_LB_TEST_CALLS names a file, ``echo`` (and the apps built
on it) append one line per request they were called with, once they hold the whole request
(head and body): "METHOD RAW_URI". A test reads that file to prove that a request the server
must refuse NEVER reached the app. Bodies are streamed, so a server has to call the app before
it can know that a chunked body is malformed; such a call gets an error from wsgi.input, never
completes the body and so never writes a line.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from typing import Any
from urllib.parse import parse_qs
from wsgiref.validate import validator

Environ = dict[str, Any]
StartResponse = Callable[..., Any]


# Not an app: `python -m prefork_lb tests.apps:NOT_CALLABLE` must fail with one line.
NOT_CALLABLE = "a string, not a WSGI app"


# ASGI applications, as FastAPI and Starlette are: `python -m prefork_lb tests.apps:asgi_app`
# (or :asgi_instance) must refuse them at boot with one line, not answer every request 500.
async def asgi_app(scope: dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any]) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"asgi"})


class AsgiApp:
    """Like FastAPI(): an object whose ``__call__`` is ``async def (scope, receive, send)``."""

    async def __call__(
        self, scope: dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any]
    ) -> None:
        await asgi_app(scope, receive, send)


asgi_instance = AsgiApp()


def _record_call(environ: Environ) -> None:
    path = os.environ.get("PREFORK_LB_TEST_CALLS")
    if path:
        line = f"{environ.get('REQUEST_METHOD')} {environ.get('RAW_URI')}\n"
        with open(path, "a", encoding="latin-1") as f:
            f.write(line)


def _query(environ: Environ) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(environ.get("QUERY_STRING", "")).items()}


def _json_response(start_response: StartResponse, data: Any, status: str = "200 OK") -> list[bytes]:
    body = json.dumps(data, sort_keys=True).encode("ascii")
    start_response(status, [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]


def describe(environ: Environ, body: bytes) -> dict[str, Any]:
    """What echo reports: the request as the app sees it."""
    return {
        "method": environ["REQUEST_METHOD"],
        "path_info": environ.get("PATH_INFO", ""),
        "script_name": environ.get("SCRIPT_NAME", ""),
        "query": environ.get("QUERY_STRING", ""),
        "protocol": environ.get("SERVER_PROTOCOL", ""),
        "raw_uri": environ.get("RAW_URI"),
        "headers": {k: v for k, v in environ.items() if k.startswith(("HTTP_", "CONTENT_"))},
        "body": body.decode("latin-1"),
    }


def echo(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    """The request as JSON; the body is read in full from wsgi.input."""
    body = environ["wsgi.input"].read()
    _record_call(environ)
    return _json_response(start_response, describe(environ, body))


def hello(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    """A fixed body with Content-Length (HEAD tests compare against GET)."""
    _record_call(environ)
    body = b"hello, world\n"
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


def boom(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    """Raises before start_response; the message is a marker a test looks for in the log."""
    raise RuntimeError("boom-marker-7f3a: the app failed before start_response")


def boom_late(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    """Streams (no Content-Length) one chunk, then raises."""
    start_response("200 OK", [("Content-Type", "text/plain")])

    def body() -> Iterator[bytes]:
        yield b"first chunk\n"
        raise RuntimeError("boom-late-marker-91c2: the app failed after its first chunk")

    return body()


def str_body(environ: Environ, start_response: StartResponse) -> Iterable[Any]:
    """A common mistake: a str where WSGI wants bytes. /write passes one to write(), /length
    does so under a Content-Length, /yield yields one, /list returns one in a list, /mixed
    returns [str, bytes], /late yields bytes first and a str after; anything else is 200 ok."""
    path = environ["PATH_INFO"]
    if path == "/length":
        write = start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "5")])
        write("hello")
        return []
    write = start_response("200 OK", [("Content-Type", "text/plain")])
    if path == "/write":
        write("hello")
        return []
    if path == "/yield":
        return iter(["hello"])
    if path == "/list":
        return ["hello"]
    if path == "/mixed":
        return ["hello", b" world"]
    if path == "/late":
        return iter([b"first chunk\n", "then a str"])
    return [b"ok"]


def slow_stream(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    """?n=N&delay=SECONDS: N chunks 'chunk i\\n', sleeping between them (time.sleep is
    cooperative in the worker: gevent has patched it). No Content-Length."""
    q = _query(environ)
    n = min(int(q.get("n", "3")), 1000)
    delay = min(float(q.get("delay", "0")), 10.0)
    start_response("200 OK", [("Content-Type", "text/plain")])

    def body() -> Iterator[bytes]:
        for i in range(n):
            if i and delay:
                time.sleep(delay)
            yield b"chunk %d\n" % i

    return body()


def no_read(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    """Answers without touching the request body."""
    _record_call(environ)
    body = b"did not read the body\n"
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


def answer_early(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    """Answers an upload without reading its body: 413 (``/too-large``), or a 303 redirect
    (``/moved``); a request it does read the body of (``/read``) gets the body's size."""
    path = environ["PATH_INFO"]
    if path == "/read":
        body = str(len(environ["wsgi.input"].read())).encode()
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
        return [body]
    if path == "/moved":
        body = b"see /elsewhere\n"
        start_response("303 See Other", [("Location", "/elsewhere"), ("Content-Length", str(len(body)))])
        return [body]
    body = b"too large\n"
    start_response(
        "413 Content Too Large", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))]
    )
    return [body]


def count(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    """Reads the body in 64 KiB pieces and reports how many bytes came, and the largest piece."""
    inp = environ["wsgi.input"]
    total = 0
    largest = 0
    for _ in range(1 << 20):  # bounded: 64 GiB at most
        data = inp.read(65536)
        if not data:
            break
        total += len(data)
        largest = max(largest, len(data))
    return _json_response(start_response, {"bytes": total, "largest_read": largest})


def environ_keys(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    """The PEP 3333 keys, as JSON-able values (types where the value itself is an object)."""
    inp = environ.get("wsgi.input")
    err = environ.get("wsgi.errors")
    data: dict[str, Any] = {}
    for k in (
        "REQUEST_METHOD",
        "SCRIPT_NAME",
        "PATH_INFO",
        "QUERY_STRING",
        "CONTENT_TYPE",
        "CONTENT_LENGTH",
        "SERVER_NAME",
        "SERVER_PORT",
        "SERVER_PROTOCOL",
        "REMOTE_ADDR",
        "REMOTE_PORT",
        "RAW_URI",
        "wsgi.url_scheme",
        "wsgi.multithread",
        "wsgi.multiprocess",
        "wsgi.run_once",
        "wsgi.input_terminated",
    ):
        data[k] = environ.get(k, "<missing>")
    data["wsgi.version"] = list(environ["wsgi.version"]) if "wsgi.version" in environ else "<missing>"
    data["wsgi.input"] = {
        m: callable(getattr(inp, m, None)) for m in ("read", "readline", "readlines", "__iter__")
    }
    data["wsgi.errors"] = {m: callable(getattr(err, m, None)) for m in ("write", "writelines", "flush")}
    data["wsgi.file_wrapper"] = callable(environ.get("wsgi.file_wrapper"))
    data["types"] = {k: type(v).__name__ for k, v in environ.items() if isinstance(k, str) and k.isupper()}
    return _json_response(start_response, data)


def file_wrapper(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    """?size=N: N bytes of a real temporary file through wsgi.file_wrapper (sendfile path);
    ?length=0 leaves Content-Length out."""
    q = _query(environ)
    size = min(int(q.get("size", "100000")), 1 << 26)
    fh = tempfile.TemporaryFile()  # noqa: SIM115 - closed by the server through the wrapper's close()
    fh.write(file_body(size))
    fh.seek(0)
    headers = [("Content-Type", "application/octet-stream")]
    if q.get("length", "1") != "0":
        headers.append(("Content-Length", str(size)))
    start_response("200 OK", headers)
    return environ["wsgi.file_wrapper"](fh, 8192)


def file_body(size: int) -> bytes:
    """What file_wrapper serves for ?size=N."""
    pattern = b"abcdefghijklmnopqrstuvwxyz0123456789\n"
    return (pattern * (size // len(pattern) + 1))[:size]


# -- the wsgiref.validate app --------------------------------------------------------------------

# Problems seen outside a request's own response (an iterable the server never closed, a
# validator error raised while the server iterated): reported by GET /problems.
_problems: list[str] = []
_open_iterables: dict[int, str] = {}


def _inner(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    """The app under wsgiref.validate. Routes on PATH_INFO."""
    path = environ["PATH_INFO"]
    method = environ["REQUEST_METHOD"]
    inp = environ["wsgi.input"]
    text = [("Content-Type", "text/plain")]
    if path == "/get":
        body = b"GET ok\n"
        start_response("200 OK", text + [("Content-Length", str(len(body)))])
        return [body]
    if path == "/head":
        # The same response for GET and HEAD: the server drops the body for HEAD.
        body = b"head body, 24 bytes long"
        start_response("200 OK", text + [("Content-Length", str(len(body)))])
        return [body]
    if path.startswith("/post/"):
        how = path[len("/post/") :]
        if how == "read":
            parts = []
            for _ in range(100000):
                data = inp.read(7)  # the validator only allows read(size)
                if not data:
                    break
                parts.append(data)
            got = b"".join(parts)
        elif how == "readline":
            lines = []
            for _ in range(100000):
                line = inp.readline()
                if not line:
                    break
                lines.append(line)
            got = b"".join(lines)
        elif how == "readlines":
            got = b"".join(inp.readlines())
        elif how == "iter":
            got = b"".join(line for line in inp)
        else:
            start_response("404 Not Found", text)
            return [b"unknown read style\n"]
        body = b"%s %d:%s" % (method.encode(), len(got), got)
        start_response("200 OK", text + [("Content-Length", str(len(body)))])
        return [body]
    if path == "/stream":
        start_response("200 OK", text)

        def gen() -> Iterator[bytes]:
            for i in range(5):
                yield b"part %d\n" % i

        return gen()
    if path == "/write":
        write = start_response("200 OK", text)
        write(b"written 1\n")
        write(b"written 2\n")
        return [b"returned\n"]
    if path == "/file":
        fd, name = tempfile.mkstemp(prefix="prefork_lb_test_")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(b"0123456789" * 10000)  # 100000 bytes
            fh = open(name, "rb")  # noqa: SIM115 - closed by the server through the wrapper's close()
        finally:
            os.unlink(name)  # the open handle keeps the data
        start_response("200 OK", [("Content-Type", "application/octet-stream"), ("Content-Length", "100000")])
        return environ["wsgi.file_wrapper"](fh, 8192)
    if path == "/selftest-bad-header":
        # PEP 3333 forbids a Status header: the validator must object (proves the harness works).
        start_response("200 OK", text + [("Status", "200")])
        return [b"never sent\n"]
    start_response("404 Not Found", text)
    return [b"not found\n"]


_linted = validator(_inner)


class _Guard:
    """Wraps the validator's iterable: validator errors while the server iterates go into the
    stream (so the body is visibly wrong) and into /problems; a missing close() is noticed."""

    def __init__(self, inner: Any, label: str) -> None:
        self.inner = inner
        self.it = iter(inner)
        self.key = id(self)
        _open_iterables[self.key] = label

    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        try:
            return next(self.it)
        except StopIteration:
            raise
        except AssertionError as exc:
            _problems.append(f"validator error while iterating: {exc}")
            self.it = iter(())
            return b"\nVALIDATOR ERROR: " + str(exc).encode("utf-8", "replace")

    def close(self) -> None:
        _open_iterables.pop(self.key, None)
        try:
            self.inner.close()
        except AssertionError as exc:
            _problems.append(f"validator error in close(): {exc}")


def validated(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    """The wsgiref.validate-wrapped app. Validator errors and warnings come back in the response:
    an error as '500 Validator Error' with the message, a warning as an X-Validator-Warnings
    header. GET /problems lists what went wrong outside a response (see _Guard)."""
    if environ.get("PATH_INFO") == "/problems":
        problems = list(_problems)
        problems += [f"iterable never closed: {label}" for label in _open_iterables.values()]
        return _json_response(start_response, problems)
    called: list[Any] = []

    def sr(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        if caught:
            headers = headers + [("X-Validator-Warnings", " | ".join(str(w.message) for w in caught)[:500])]
        called.append(status)
        return start_response(status, headers, exc_info) if exc_info else start_response(status, headers)

    label = f"{environ.get('REQUEST_METHOD')} {environ.get('PATH_INFO')}"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            result = _linted(environ, sr)
        except AssertionError as exc:
            body = f"VALIDATOR ERROR: {exc}\n".encode("utf-8", "replace")
            start_response(
                "500 Validator Error",
                [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))],
                sys.exc_info(),
            )
            return [body]
    return _Guard(result, label)


def block_loop(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    """/block spins the CPU without yielding (at most 30 s): the worker's event loop, and so
    its heartbeat, stops. Anything else answers at once."""
    if environ["PATH_INFO"] == "/block":
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            pass
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "2")])
    return [b"ok"]


def scheme(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    """Answers with wsgi.url_scheme (for forwarded-header tests)."""
    body = environ["wsgi.url_scheme"].encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


def fib(n: int) -> int:
    return n if n < 2 else fib(n - 1) + fib(n - 2)


def compute(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    """/offload/N: fib(N) in the worker's offload pool; /offload-fail: a task that raises
    (answers 'failed'); /offload-sleep/S/T: a task sleeping S s with timeout T (answers
    'timeout' past it); /inline/N: fib(N) in the worker; /pids: the worker's pid and its pool
    processes; /pool-size: the size of its pool; anything else: 'ok' at once."""
    parts = environ["PATH_INFO"].strip("/").split("/")
    offload = environ.get("prefork_lb.offload")
    if parts[0] == "offload":
        body = str(offload(fib, int(parts[1]))).encode()
    elif parts[0] == "offload-fail":
        try:
            offload(int, "not a number")
            body = b"no error"
        except ValueError:
            body = b"failed"
    elif parts[0] == "offload-sleep":
        try:
            offload(time.sleep, float(parts[1]), timeout=float(parts[2]))
            body = b"slept"
        except TimeoutError:
            body = b"timeout"
    elif parts[0] == "inline":
        body = str(fib(int(parts[1]))).encode()
    elif parts[0] == "pids":
        from prefork_lb.offload import default_pool

        body = json.dumps({"worker": os.getpid(), "pool": default_pool().pids()}).encode()
    elif parts[0] == "pool-size":
        from prefork_lb.offload import default_pool

        body = str(default_pool().stats()["size"]).encode()
    else:
        body = b"ok"
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


_HOARD: list[bytes] = []


def overload(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    """/sleep/S: waits S seconds cooperatively; /hold: waits cooperatively (at most 30 s) until
    the file named by PREFORK_LB_TEST_GATE exists; /leak/MB: keeps MB more MiB for good;
    /pid: the worker's pid; anything else: 'ok'."""
    import gevent

    parts = environ["PATH_INFO"].strip("/").split("/")
    body = b"ok"
    if parts[0] == "sleep":
        gevent.sleep(float(parts[1]))
    elif parts[0] == "hold":
        gate = os.environ["PREFORK_LB_TEST_GATE"]
        deadline = time.monotonic() + 30
        while not os.path.exists(gate) and time.monotonic() < deadline:
            gevent.sleep(0.01)
    elif parts[0] == "leak":
        _HOARD.append(b"x" * (int(parts[1]) << 20))
    elif parts[0] == "pid":
        body = str(os.getpid()).encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


def burn_cpu(seconds: float) -> None:
    """Computes for ``seconds`` without yielding: the worker's event loop (and heartbeat) stops."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        pass


def wait_cooperatively(seconds: float) -> None:
    import gevent

    gevent.sleep(seconds)


def hold_the_gil(seconds: float) -> None:
    """A C call that keeps the GIL for ``seconds`` (libc sleep through ctypes.PyDLL, which does
    not release it): nothing in the worker runs meanwhile, not even a signal's Python handler."""
    import ctypes

    ctypes.PyDLL(None).sleep(int(seconds))


def deadlines(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    """--request-timeout: /burn/S computes S seconds (at most 30) holding the loop; /gil/S sits
    S seconds in a C call holding the GIL; /sleep/S waits S seconds cooperatively; /pid: the worker's pid; anything else: 'ok'. Every call is
    recorded as it starts (PREFORK_LB_TEST_CALLS), so a test counts the tries that reached it."""
    parts = environ["PATH_INFO"].strip("/").split("/")
    _record_call(environ)
    body = b"ok"
    if parts[0] == "burn":
        burn_cpu(min(30.0, float(parts[1])))
    elif parts[0] == "sleep":
        wait_cooperatively(min(30.0, float(parts[1])))
    elif parts[0] == "gil":
        hold_the_gil(min(30.0, float(parts[1])))
    elif parts[0] == "pid":
        body = str(os.getpid()).encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


def request_id(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    """The request ids the app saw, as JSON: the canonical one (``prefork_lb.request_id``),
    the incoming headers as they arrived, and the worker's pid."""
    return _json_response(
        start_response,
        {
            "canonical": environ.get("prefork_lb.request_id"),
            "incoming": environ.get("HTTP_X_REQUEST_ID"),
            "correlation": environ.get("HTTP_X_CORRELATION_ID"),
            "pid": os.getpid(),
        },
    )


_served = [0]


def cacheable(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    """``Cache-Control: public, max-age=60``; the body names the worker and how many requests
    it has answered, so a response from a cache is told apart from a new one."""
    _served[0] += 1
    body = f"{os.getpid()} {_served[0]}\n".encode()
    start_response(
        "200 OK",
        [
            ("Content-Type", "text/plain"),
            ("Cache-Control", "public, max-age=60"),
            ("Content-Length", str(len(body))),
        ],
    )
    return [body]
