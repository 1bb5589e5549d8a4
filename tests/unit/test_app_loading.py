"""load_app: 'module:attribute' and 'module:factory()', and what a wrong app path says."""

from __future__ import annotations

import importlib
import os
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from prefork_lb import demo
from prefork_lb.app import AppLoadError, asgi_shape, load_app, wsgi_app

WriteModule = Callable[[str, str], Path]


@pytest.fixture
def write_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[WriteModule]:
    """Write modules into tmp_path, the current directory (load_app imports from there).

    sys.path, the working directory and the imported modules are put back afterwards.
    """
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    written: list[str] = []

    def write(name: str, source: str) -> Path:
        *packages, module = name.split(".")
        folder = tmp_path
        for package in packages:
            folder = folder / package
            folder.mkdir(exist_ok=True)
            (folder / "__init__.py").touch()
        path = folder / f"{module}.py"
        path.write_text(textwrap.dedent(source))
        written.append(name.split(".")[0])
        importlib.invalidate_caches()
        return path

    yield write
    for mod in list(sys.modules):
        if mod.split(".")[0] in written:
            del sys.modules[mod]


APP_SOURCE = """
    def app(environ, start_response):
        start_response("200 OK", [])
        return [b"hi"]

    application = app
    VALUE = 42

    class Holder:
        app = staticmethod(app)

    holder = Holder()
    made = []

    def create_app():
        made.append(1)
        return app

    def create_nothing():
        return None
"""


# -- found -----------------------------------------------------------------------------------------


def test_module_and_attribute(write_module: WriteModule) -> None:
    write_module("myapp_ok", APP_SOURCE)
    loaded = load_app("myapp_ok:app")
    assert loaded is sys.modules["myapp_ok"].app


def test_attribute_defaults_to_application(write_module: WriteModule) -> None:
    write_module("myapp_default", APP_SOURCE)
    assert load_app("myapp_default") is sys.modules["myapp_default"].application


def test_dotted_attribute(write_module: WriteModule) -> None:
    write_module("myapp_dotted", APP_SOURCE)
    assert load_app("myapp_dotted:holder.app") is sys.modules["myapp_dotted"].app


def test_module_in_a_package(write_module: WriteModule) -> None:
    write_module("mypkg_ok.web.wsgi", APP_SOURCE)
    assert load_app("mypkg_ok.web.wsgi:app") is sys.modules["mypkg_ok.web.wsgi"].app


def test_factory_call_form(write_module: WriteModule) -> None:
    write_module("myapp_factory", APP_SOURCE)
    loaded = load_app("myapp_factory:create_app()")
    module = sys.modules["myapp_factory"]
    assert loaded is module.app
    assert module.made == [1]  # called once


def test_bundled_demo_app() -> None:
    assert load_app("prefork_lb.demo:app") is demo.app


def test_chdir_before_import(write_module: WriteModule, tmp_path: Path) -> None:
    # write_module restores the working directory and sys.path that load_app changes.
    sub = tmp_path / "sub"
    sub.mkdir()
    (sub / "myapp_chdir.py").write_text(textwrap.dedent(APP_SOURCE))
    importlib.invalidate_caches()
    try:
        loaded = load_app("myapp_chdir:app", chdir=str(sub))
        assert os.getcwd() == str(sub)
        assert loaded is sys.modules["myapp_chdir"].app
    finally:
        sys.modules.pop("myapp_chdir", None)


# -- wrong app paths: one line, AppLoadError -------------------------------------------------------


def test_missing_module(write_module: WriteModule) -> None:
    with pytest.raises(AppLoadError) as info:
        load_app("no_such_app_module_xyz:app")
    assert str(info.value) == (
        "cannot import module 'no_such_app_module_xyz' (from app path 'no_such_app_module_xyz:app')"
    )


def test_missing_module_in_existing_package(write_module: WriteModule) -> None:
    write_module("mypkg_missing.present", APP_SOURCE)
    with pytest.raises(AppLoadError, match=r"cannot import module 'mypkg_missing\.absent'"):
        load_app("mypkg_missing.absent:app")


def test_missing_attribute(write_module: WriteModule) -> None:
    write_module("myapp_noattr", APP_SOURCE)
    with pytest.raises(AppLoadError) as info:
        load_app("myapp_noattr:nope")
    assert str(info.value) == "module 'myapp_noattr' has no attribute 'nope'"


def test_missing_dotted_attribute(write_module: WriteModule) -> None:
    write_module("myapp_nodotted", APP_SOURCE)
    with pytest.raises(AppLoadError) as info:
        load_app("myapp_nodotted:holder.nope")
    assert str(info.value) == "module 'myapp_nodotted' has no attribute 'holder.nope'"


def test_not_callable(write_module: WriteModule) -> None:
    write_module("myapp_value", APP_SOURCE)
    with pytest.raises(AppLoadError) as info:
        load_app("myapp_value:VALUE")
    assert str(info.value) == "app 'myapp_value:VALUE' is not callable (it is a int)"


def test_factory_returning_non_callable(write_module: WriteModule) -> None:
    write_module("myapp_badfactory", APP_SOURCE)
    with pytest.raises(AppLoadError, match=r"is not callable \(it is a NoneType\)"):
        load_app("myapp_badfactory:create_nothing()")


def test_empty_module_name() -> None:
    with pytest.raises(AppLoadError) as info:
        load_app(":app")
    assert str(info.value) == "invalid app path ':app': expected MODULE:APP"


def test_chdir_to_missing_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    missing = str(tmp_path / "gone")
    with pytest.raises(AppLoadError) as info:
        load_app("prefork_lb.demo:app", chdir=missing)
    assert str(info.value) == f"cannot change to directory {missing!r}: No such file or directory"


# -- the app's own import fails: the real error, with its traceback --------------------------------


def test_app_importing_a_missing_module_raises_that_error(write_module: WriteModule) -> None:
    write_module("myapp_baddep", "import definitely_not_installed_xyz\n" + textwrap.dedent(APP_SOURCE))
    with pytest.raises(ModuleNotFoundError) as info:
        load_app("myapp_baddep:app")
    assert not isinstance(info.value, AppLoadError)
    assert info.value.name == "definitely_not_installed_xyz"


def test_app_with_failing_from_import_raises_that_error(write_module: WriteModule) -> None:
    write_module("myapp_badname", "from os import no_such_function_xyz\n")
    with pytest.raises(ImportError, match="cannot import name 'no_such_function_xyz'"):
        load_app("myapp_badname:app")


def test_app_module_raising_at_import_propagates(write_module: WriteModule) -> None:
    write_module("myapp_raises", "raise RuntimeError('settings missing')\n")
    with pytest.raises(RuntimeError, match="settings missing"):
        load_app("myapp_raises:app")


def test_missing_dependency_named_like_the_app_module_prefix(write_module: WriteModule) -> None:
    write_module("myapp_prefix_server", "import myapp_prefix\n")
    with pytest.raises(ModuleNotFoundError) as info:
        load_app("myapp_prefix_server:app")
    assert info.value.name == "myapp_prefix"


# -- not a WSGI app: an ASGI application is refused with one line ----------------------------------

ASGI_SOURCE = """
    import functools

    async def app(scope, receive, send):
        pass

    class Framework:  # FastAPI, Starlette: an object with an async __call__
        async def __call__(self, scope, receive, send):
            pass

    class SubFramework(Framework):
        pass

    class Asgi2:  # ASGI 2: the class is called with the scope, its instance with receive, send
        def __init__(self, scope):
            self.scope = scope

        async def __call__(self, receive, send):
            pass

    fastapi_like = Framework()
    inherited = SubFramework()
    partial_app = functools.partial(app)

    async def two_args(environ, start_response):  # an "async WSGI" app: no such thing
        pass
"""

WSGI_SHAPES_SOURCE = """
    class WsgiClass:  # PEP 3333's class form: called per request, iterated for the body
        def __init__(self, environ, start_response):
            start_response("200 OK", [])

        def __iter__(self):
            yield b"hi"

    class Middleware:
        def __call__(self, environ, start_response):
            start_response("200 OK", [])
            return [b"hi"]

    middleware = Middleware()
"""


@pytest.mark.parametrize(
    ("attr", "shape"),
    [
        ("app", "async def app(scope, receive, send)"),
        ("fastapi_like", "a Framework object with async def __call__(scope, receive, send)"),
        ("inherited", "a SubFramework object with async def __call__(scope, receive, send)"),
        ("Asgi2", "class Asgi2 has an async def __call__ (ASGI 2: scope, then receive, send)"),
        ("partial_app", "async def app(scope, receive, send)"),
        ("two_args", "async def two_args(environ, start_response)"),
    ],
)
def test_asgi_app_is_refused(write_module: WriteModule, attr: str, shape: str) -> None:
    write_module("myapp_asgi", ASGI_SOURCE)
    with pytest.raises(AppLoadError) as info:
        load_app(f"myapp_asgi:{attr}")
    assert str(info.value) == (
        f"app 'myapp_asgi:{attr}' is an ASGI application ({shape}), not a WSGI one: "
        "start it with --interface asgi (or auto)"
    )


@pytest.mark.parametrize("attr", ["WsgiClass", "middleware"])
def test_wsgi_shapes_are_accepted(write_module: WriteModule, attr: str) -> None:
    write_module("myapp_shapes", WSGI_SHAPES_SOURCE)
    assert load_app(f"myapp_shapes:{attr}") is getattr(sys.modules["myapp_shapes"], attr)


def test_asgi_shape_of_plain_callables() -> None:
    assert asgi_shape(demo.app) is None
    assert asgi_shape(print) is None
    assert asgi_shape(dict) is None


def test_wsgi_app_checks_an_app_object() -> None:
    """prefork_lb.run(app) hands an object, not a path: the same checks apply."""

    async def app(scope: object, receive: object, send: object) -> None:
        pass

    assert wsgi_app(demo.app, "app") is demo.app
    with pytest.raises(AppLoadError, match=r"^app 'app' is an ASGI application \(async def app"):
        wsgi_app(app, "app")
    with pytest.raises(AppLoadError, match=r"^app 'app' is not callable \(it is a str\)"):
        wsgi_app("app", "app")
