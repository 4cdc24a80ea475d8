"""Every argument of every decorator and constructor builders use is checked in the SDK,
before anything is sent: a bad value raises a one-line crucible error that names the
argument (never a pydantic ValidationError, a TypeError or a traceback of the wire model)."""

from __future__ import annotations

import inspect
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import crucible

HUGE = 10**30

# Bad values for each parameter of @app.function (and @app.cls, which takes the same).
FUNCTION_BAD: dict[str, list[Any]] = {
    "gpu": ["NOPE", "H100:0", "H100:-1", 5, ["H100", 7], "H100:" + "9" * 30],
    "cpu": [0, -1, HUGE, "two", True, float("nan")],
    "memory": [0, -1, 10**12, HUGE, "lots", True, "-5GiB"],
    "timeout": [0, -1, HUGE, "60", None, True],
    "retries": [-1, HUGE, "3", 1.5, True],
    "max_containers": [0, -1, HUGE, "x", 2.0, True],
    "scaledown_window": [-1, HUGE, "60", True],
    "image": [5, "python:3.11", crucible.Image],
    "network": [
        1,
        "yes",
        None,
        "pypi.org:443",  # a string, not a list of them
        [],
        ["pypi.org"],  # no port
        ["pypi.org:0"],
        ["pypi.org:70000"],
        ["pypi.org:443-80"],
        [443],
        ["localhost:8000"],
        ["127.0.0.1:8000"],
        ["169.254.169.254:80"],
        ["0.0.0.0/0:443"],
        ["[::1]:80"],
        ["bad_name!:80"],
        ["x.internal:80"],
        [f"h{i}.example.org:443" for i in range(65)],
    ],
    "name": ["bad name!", "", "a" * 129, 5, "../x", "é", "newline\n"],
    "min_containers": [-1, HUGE, "1", 1.0, True],
    "buffer_containers": [-1, HUGE, "1", None],
    "tier": ["spot", "", 5, None],
    "bid": [-1, HUGE, "1", True],
    "max_price": [-1, HUGE, "1", True],
    "region": ["", 5, "r" * 129, "eu\x1b[2J", "eu west", "-eu"],
    "min_reliability": [-0.1, 1.5, HUGE, "high", None, True],
    "prefer": ["fast", "", 5, None],
    "secrets": ["hf", [5], crucible.Secret.from_name("hf"), None],
    "max_carbon_g_per_kwh": [-1, 5001, HUGE, "low", 1.5, True],
    "verified": [1, "yes", None],
    "schedule": ["*/5 * * * *", 300, crucible.Cron],
    "volumes": [
        ["/data"],
        {"/data": "data"},
        {"relative": crucible.Volume("v", None)},
        {"/usr": crucible.Volume("v", None)},
        {"/proc/x": crucible.Volume("v", None)},
    ],
    # Modal's older names: any value is refused, naming the option to use instead.
    "keep_warm": [1, 0],
    "concurrency_limit": [4],
    "container_idle_timeout": [60],
    "allow_concurrent_inputs": [8],
}
# The argument that gets the blame when a value is bad (bid needs tier=interruptible).
EXTRA: dict[str, dict[str, Any]] = {"bid": {"tier": "interruptible"}}
ONE_LINE_MAX = 400


def _assert_clear(exc: BaseException, names: str, value: Any) -> None:
    assert isinstance(exc, crucible.InvalidRequestError), (
        f"{names}={value!r} raised {type(exc).__name__}: {exc}"
    )
    message = str(exc)
    assert "\n" not in message and len(message) <= ONE_LINE_MAX, message
    assert names in message, f"{names}={value!r} gave a message that does not name it: {message}"
    assert "validation error" not in message.lower() and "pydantic" not in message


def _raises(call: Callable[[], Any]) -> BaseException:
    try:
        call()
    except BaseException as exc:  # the class is what the test checks
        return exc
    raise AssertionError("no error was raised")


def _f(x: int) -> int:
    return x


def _registered() -> crucible.Function[..., Any]:
    return crucible.App("args").function()(_f)


def _call() -> crucible.FunctionCall[Any]:
    from crucible.sdk._client import Client

    return crucible.FunctionCall(Client("http://127.0.0.1:9", "unused"), "ca-x")


def test_every_function_parameter_has_bad_cases() -> None:
    params = set(inspect.signature(crucible.App.function).parameters) - {"self", "_func"}
    assert params == set(FUNCTION_BAD), "add bad values for new @app.function() parameters"


@pytest.mark.parametrize(
    ("param", "value"), [(p, v) for p, values in FUNCTION_BAD.items() for v in values]
)
def test_function_argument_checked(param: str, value: Any) -> None:
    app = crucible.App("args")
    kwargs = {**EXTRA.get(param, {}), param: value}
    exc = _raises(lambda: app.function(**kwargs)(_f))
    _assert_clear(exc, "gpu" if param == "gpu" else param, value)


@pytest.mark.parametrize(("param", "value"), [(p, vs[0]) for p, vs in FUNCTION_BAD.items()])
def test_cls_argument_checked(param: str, value: Any) -> None:
    app = crucible.App("args")
    kwargs = {**EXTRA.get(param, {}), param: value}

    def decorate() -> Any:
        class Model:
            @crucible.method()
            def predict(self, x: int) -> int:
                return x

        return app.cls(**kwargs)(Model)

    _assert_clear(_raises(decorate), param, value)


def test_max_containers_negative_says_the_bound() -> None:
    app = crucible.App("args")
    exc = _raises(lambda: app.function(max_containers=-1)(_f))
    assert "max_containers must be >= 1" in str(exc)
    assert "min_containers" not in str(exc)


def test_min_above_max_names_both() -> None:
    app = crucible.App("args")
    exc = _raises(lambda: app.function(min_containers=5, max_containers=2)(_f))
    _assert_clear(exc, "min_containers=5", 5)
    assert "max_containers=2" in str(exc)


def test_cls_unknown_option_named() -> None:
    app = crucible.App("args")
    exc = _raises(lambda: app.cls(gpus="H100"))
    _assert_clear(exc, "'gpus'", "gpus")


def test_function_name_from_def_is_checked() -> None:
    app = crucible.App("args")
    namespace: dict[str, Any] = {}
    exec("def café(x):\n    return x\n", namespace)  # a valid identifier, not a valid name
    exc = _raises(lambda: app.function()(namespace["café"]))
    _assert_clear(exc, "name", "café")


CASES: list[tuple[str, Callable[[], Any], str]] = [
    ("App name", lambda: crucible.App("bad name!"), "App name"),
    ("App name type", lambda: crucible.App(5), "App name"),  # type: ignore[arg-type]
    ("App name long", lambda: crucible.App("a" * 200), "App name"),
    ("Retries max", lambda: crucible.Retries(-1), "max_retries"),
    ("Retries type", lambda: crucible.Retries("3"), "max_retries"),  # type: ignore[arg-type]
    ("Retries huge", lambda: crucible.Retries(HUGE), "max_retries"),
    ("Retries delay", lambda: crucible.Retries(1, initial_delay=-1), "initial_delay"),
    ("Retries backoff", lambda: crucible.Retries(1, backoff_coefficient=0), "backoff_coefficient"),
    ("Retries max delay", lambda: crucible.Retries(1, max_delay=HUGE), "max_delay"),
    ("Retries delay type", lambda: crucible.Retries(1, initial_delay="1"), "initial_delay"),  # type: ignore[arg-type]
    ("concurrent 0", lambda: crucible.concurrent(max_inputs=0), "max_inputs"),
    ("concurrent -1", lambda: crucible.concurrent(max_inputs=-1), "max_inputs"),
    ("concurrent huge", lambda: crucible.concurrent(max_inputs=HUGE), "max_inputs"),
    ("concurrent type", lambda: crucible.concurrent(max_inputs="8"), "max_inputs"),  # type: ignore[arg-type]
    ("concurrent target", lambda: crucible.concurrent(max_inputs=4, target_inputs=0), "target"),
    ("target>max", lambda: crucible.concurrent(max_inputs=4, target_inputs=8), "target_inputs"),
    ("batched 0", lambda: crucible.batched(max_batch_size=0, wait_ms=10), "max_batch_size"),
    ("batched huge", lambda: crucible.batched(max_batch_size=HUGE, wait_ms=10), "max_batch_size"),
    ("batched type", lambda: crucible.batched(max_batch_size=2.5, wait_ms=10), "max_batch_size"),  # type: ignore[arg-type]
    ("batched wait", lambda: crucible.batched(max_batch_size=4, wait_ms=-1), "wait_ms"),
    ("batched wait huge", lambda: crucible.batched(max_batch_size=4, wait_ms=HUGE), "wait_ms"),
    ("batched wait type", lambda: crucible.batched(max_batch_size=4, wait_ms="5"), "wait_ms"),  # type: ignore[arg-type]
    ("fastapi method", lambda: crucible.fastapi_endpoint(method="FETCH"), "method"),
    ("fastapi method type", lambda: crucible.fastapi_endpoint(method=5), "method"),  # type: ignore[arg-type]
    ("fastapi public", lambda: crucible.fastapi_endpoint(public=1), "public"),  # type: ignore[arg-type]
    ("asgi public", lambda: crucible.asgi_app(public="yes"), "public"),  # type: ignore[arg-type]
    ("enter snapshot", lambda: crucible.enter(snapshot=1), "snapshot"),  # type: ignore[arg-type]
    ("enter snap", lambda: crucible.enter(snap="yes"), "snap"),  # type: ignore[arg-type]
    ("pip none", lambda: crucible.Image().pip_install(), "pip_install"),
    ("pip type", lambda: crucible.Image().pip_install(5), "pip_install"),  # type: ignore[arg-type]
    ("pip blank", lambda: crucible.Image().pip_install(" "), "pip_install"),
    ("pip flag", lambda: crucible.Image().pip_install("--index-url=http://x"), "pip_install"),
    ("uv_pip type", lambda: crucible.Image().uv_pip_install([5]), "pip_install"),  # type: ignore[list-item]
    ("env type", lambda: crucible.Image().env({"A": 5}), "env"),  # type: ignore[dict-item]
    ("env name", lambda: crucible.Image().env({"BAD NAME": "x"}), "env"),
    ("env reserved", lambda: crucible.Image().env({"CRUCIBLE_TOKEN": "x"}), "env"),
    ("preload name", lambda: crucible.Image().preload("bad mod!"), "preload"),
    ("preload type", lambda: crucible.Image().preload(5), "preload"),  # type: ignore[arg-type]
    ("local dir type", lambda: crucible.Image().add_local_dir(5, "/x"), "local_path"),  # type: ignore[arg-type]
    ("local dir remote", lambda: crucible.Image().add_local_dir(".", "rel/path"), "remote_path"),
    ("local dir dotdot", lambda: crucible.Image().add_local_dir(".", "/a/../b"), "add_local_dir"),
    ("python source type", lambda: crucible.Image().add_local_python_source(5), "python_source"),  # type: ignore[arg-type]
    ("source name", lambda: crucible.Image().add_local_python_source("a b"), "python_source"),
    ("python source none", lambda: crucible.Image().add_local_python_source(), "python_source"),
    ("entrypoint name", lambda: crucible.App("a").local_entrypoint(name="bad name!"), "name"),
    ("deploy name", lambda: crucible.App("a").deploy(name="bad name!"), "deploy name"),
    ("parens", lambda: crucible.App("a").function(_f), "@app.function()"),
    ("on_stop", lambda: crucible.on_stop(5), "on_stop"),  # type: ignore[type-var]
    ("map kwargs", lambda: _registered().map([1], kwargs=[1]), "kwargs"),  # type: ignore[arg-type]
    ("map flag", lambda: _registered().map([1], return_exceptions=1), "return_exceptions"),  # type: ignore[arg-type]
    ("starmap kwargs", lambda: _registered().starmap([(1,)], kwargs="x"), "kwargs"),  # type: ignore[arg-type]
    ("get timeout", lambda: _call().get(timeout=-1), "timeout"),
    ("get timeout type", lambda: _call().get(timeout="1"), "timeout"),  # type: ignore[arg-type]
    ("from_name app", lambda: crucible.Function.from_name("", "f"), "app_name"),
    ("Cls.from_name name", lambda: crucible.Cls.from_name("a", None), "name"),  # type: ignore[arg-type]
]


@pytest.mark.parametrize(("case", "call", "names"), CASES, ids=[c[0] for c in CASES])
def test_argument_checked(case: str, call: Callable[[], Any], names: str) -> None:
    exc = _raises(call)
    _assert_clear(exc, names, case)


def test_good_arguments_still_pass() -> None:
    app = crucible.App("good-app_1.0")
    fn = app.function(
        gpu=["H100", "A100-80GB:2"],
        cpu=0.5,
        memory="2GiB",
        timeout=10,
        retries=crucible.Retries(2, initial_delay=0, backoff_coefficient=1.5, max_delay=3),
        max_containers=3,
        scaledown_window=0,
        network=["pypi.org:443", "10.1.2.0/24:5432", "pypi.org:443"],
        name="good.name-1",
        min_containers=1,
        buffer_containers=2,
        tier="on_demand",
        max_price=2.5,
        region="eu",
        min_reliability=1,
        prefer="greenest",
    )(_f)
    assert fn.name == "good.name-1"
    assert fn.options["network"] == ["10.1.2.0/24:5432", "pypi.org:443"]  # normalized
    interruptible = app.function(tier="interruptible", bid=0.9, max_price=1.0)(_f)
    assert interruptible.options["market"].bid_micros == 900_000


def test_crucible_run_prints_one_line(tmp_path: Path) -> None:
    """From the command line, a bad argument is one line and no traceback (the file is
    imported before anything is sent, so no exchange is needed to see it)."""
    app_file = tmp_path / "bad_app.py"
    app_file.write_text(
        "import crucible\n"
        "app = crucible.App('bad')\n"
        "@app.function(scaledown_window=-1)\n"
        "def f(x):\n"
        "    return x\n"
        "@app.local_entrypoint()\n"
        "def main():\n"
        "    f.remote(1)\n"
    )
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("CRUCIBLE_")},
        "CRUCIBLE_HOME": str(tmp_path / "home"),
        "CRUCIBLE_SERVER_URL": "http://127.0.0.1:9",
        "CRUCIBLE_TOKEN": "unused",
    }
    out = subprocess.run(
        [sys.executable, "-m", "crucible.cli.main", "run", str(app_file)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    text = (out.stdout + out.stderr).strip()
    assert out.returncode != 0
    assert "Traceback" not in text and "ValidationError" not in text
    assert text.count("\n") == 0, text
    assert "scaledown_window must be >= 0" in text


_WEB_APP = crucible.App("not-deployed")


@_WEB_APP.function()
@crucible.fastapi_endpoint()
def _page() -> dict[str, str]:
    return {}


@_WEB_APP.function()
def _plain() -> None:
    return None


def test_web_url_of_a_function_not_deployed() -> None:
    assert _plain.get_web_url() is None  # not a web endpoint: no URL, deployed or not
    with pytest.raises(crucible.Error, match=r"deploy.*Function.from_name\('not-deployed'"):
        _page.get_web_url()


def _g(x: int) -> int:
    return -x


class _Model:
    @crucible.method()
    def run(self) -> int:
        return 1


def test_two_functions_of_one_name_are_refused_not_replaced() -> None:
    # `@app.function() def f` then `@app.function(name="f") def g`: g replaced f silently,
    # and `f.remote()` then said the app was not running.
    app = crucible.App("dups")
    app.function()(_f)
    exc = _raises(lambda: app.function(name="_f")(_g))
    assert isinstance(exc, crucible.InvalidRequestError)
    assert "already has a function named '_f'" in str(exc) and "_g" in str(exc), exc
    app.function()(_f)  # the same function again (a re-run notebook cell): still one
    assert list(app.functions) == ["_f"]
    # A class and a function of one name are one name too.
    app.cls()(_Model)
    exc = _raises(lambda: app.function(name="_Model")(_g))
    assert "already has a function named '_Model'" in str(exc), exc


def test_a_scheduled_function_must_run_with_no_arguments() -> None:
    # Deployed, it then failed on every tick: "missing 1 required positional argument".
    app = crucible.App("sched")
    exc = _raises(lambda: app.function(schedule=crucible.Period(seconds=60))(_f))
    assert isinstance(exc, crucible.InvalidRequestError)
    assert "calls it with no arguments, but it needs x" in str(exc), exc

    def ok(x: int = 1, *rest: int, **more: int) -> int:
        return x

    ok.__qualname__ = "ok"  # module level, as a real app's
    app.function(schedule=crucible.Period(seconds=60))(ok)


def test_decorators_used_without_parentheses_say_so() -> None:
    """They raised Python's TypeError ("takes 0 positional arguments but 1 was given"), where
    @app.function and @crucible.enter already said what to write."""

    def f(x: int) -> int:
        return x

    for deco, words in (
        (crucible.concurrent, "@crucible.concurrent(max_inputs=8)"),
        (crucible.batched, "@crucible.batched(max_batch_size=32, wait_ms=20)"),
        (crucible.method, "@crucible.method()"),
        (crucible.exit, "@crucible.exit()"),
    ):
        with pytest.raises(crucible.InvalidRequestError, match="forget parentheses") as caught:
            deco(f)
        assert words in str(caught.value)
    with pytest.raises(crucible.InvalidRequestError, match="max_inputs must be an int"):
        crucible.concurrent()


def test_an_async_class_method_is_refused_when_it_is_defined() -> None:
    """It was accepted, then every call failed with "a coroutine cannot be pickled"."""

    async def am(self: object, x: int) -> int:
        return x

    with pytest.raises(crucible.InvalidRequestError, match=r"async def: an @app\.cls"):
        crucible.method()(am)


def test_a_web_endpoint_on_a_class_method_is_refused_not_ignored() -> None:
    """It deployed as a plain method, with no URL and no word (modal2 probe)."""
    app = crucible.App("cls-web")
    with pytest.raises(crucible.InvalidRequestError, match=r"Model\.predict: a web endpoint"):

        @app.cls()
        class Model:
            @crucible.fastapi_endpoint(method="POST")
            @crucible.method()
            def predict(self, item: dict[str, object]) -> dict[str, object]:
                return item
