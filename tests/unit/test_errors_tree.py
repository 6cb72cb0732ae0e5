"""The error tree is closed: every class in the one table, each with a hint and an
exit code, and each reads the same after the HTTP envelope and in the CLI."""

from __future__ import annotations

import importlib
import pkgutil
import re
from pathlib import Path

import httpx
import pytest
import typer
from fastapi import FastAPI
from typer.testing import CliRunner

import rbee_fabric
from rbee_fabric import errors
from rbee_fabric.cli.run import RbeeGroup
from rbee_fabric.httpserver import install_error_handlers
from rbee_fabric.keeper.client import Endpoint

CLASSES = errors.ALL_ERRORS
PACKAGE = Path(rbee_fabric.__file__).parent


def _subclasses(cls: type[errors.RbeeError]) -> list[type[errors.RbeeError]]:
    out = []
    for sub in cls.__subclasses__():
        out += [sub, *_subclasses(sub)]
    return out


def test_every_class_of_the_tree_is_in_the_table_under_its_own_code() -> None:
    mine = [c for c in _subclasses(errors.RbeeError) if c.__module__ == errors.__name__]
    assert sorted(c.__name__ for c in mine) == sorted(c.__name__ for c in CLASSES)
    codes = [c.code for c in CLASSES]
    assert len(codes) == len(set(codes)), "two classes share a code"
    for cls in CLASSES:
        assert errors.error_class(cls.code) is cls
        assert re.fullmatch(r"[A-Z][A-Z_]+", cls.code)
        assert cls.__name__ in (errors.__doc__ or ""), f"{cls.__name__} is missing from the tree drawn in errors.py"


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.code)
def test_every_class_has_a_hint_an_exit_code_and_an_http_status(cls: type[errors.RbeeError]) -> None:
    assert (cls.default_hint and cls.default_hint != errors.RbeeError.default_hint) or cls is errors.InternalError
    assert cls.exit_code in (errors.EXIT_RUNTIME, errors.EXIT_USAGE, errors.EXIT_CANCELED)
    assert 400 <= cls.http_status < 600


def test_no_error_class_or_code_lives_outside_errors_py() -> None:
    """Subclasses elsewhere (a flow's marker) keep a code of the tree; no raw code string."""
    for mod in pkgutil.walk_packages(rbee_fabric.__path__, "rbee_fabric."):
        if not mod.name.endswith("__main__"):
            importlib.import_module(mod.name)
    for cls in _subclasses(errors.RbeeError):
        if cls.__module__ != errors.__name__:
            assert errors.error_class(cls.code) in cls.__mro__, (
                f"{cls.__module__}.{cls.__name__} has code {cls.code}, which is not in errors.py's table"
            )
    known = {c.code for c in CLASSES}
    for path in PACKAGE.rglob("*.py"):
        for code in re.findall(r"""["']code["']\s*:\s*["']([A-Z][A-Z_]+)["']""", path.read_text()):
            assert code in known, f"{path.relative_to(PACKAGE)} writes error code {code}, not in errors.py"


async def _served(app: FastAPI, method: str = "GET", path: str = "/boom") -> httpx.Response:
    transport = httpx.ASGITransport(app=app)  # a JSON answer: no streaming to lose here
    async with httpx.AsyncClient(transport=transport, base_url="http://daemon") as client:
        return await client.request(method, path)


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.code)
async def test_every_class_round_trips_through_the_http_envelope(cls: type[errors.RbeeError]) -> None:
    app = FastAPI()
    install_error_handlers(app)

    @app.get("/boom")
    async def boom() -> None:
        raise cls("it broke: 42", details={"node": "mac", "n": 3})

    r = await _served(app)
    assert r.status_code == cls.http_status
    client = Endpoint("http://127.0.0.1:1", None, "mac", "key")
    try:
        with pytest.raises(errors.RbeeError) as got:
            client._check(r)  # what the keeper's client does with an error answer
    finally:
        await client.http.aclose()
    assert type(got.value) is cls
    assert got.value.message == "it broke: 42"
    # The daemon's default hint says NODE; the keeper names the node it asked.
    assert got.value.hint == re.sub(r"\bNODE\b", "mac", cls.default_hint)
    assert "rbee hive logs NODE" not in got.value.hint
    assert got.value.details == {"node": "mac", "n": 3}


async def test_the_frameworks_own_errors_are_in_the_tree() -> None:
    app = FastAPI()
    install_error_handlers(app)

    @app.get("/only-get")
    async def only_get() -> dict[str, str]:
        return {}

    @app.get("/bug")
    async def bug() -> None:
        raise ValueError("a bug")

    for method, path, cls in (("GET", "/nowhere", errors.NotFound), ("POST", "/only-get", errors.MethodNotAllowed)):
        r = await _served(app, method, path)
        assert type(errors.from_envelope(r.json(), status=r.status_code)) is cls
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://daemon") as client:
        r = await client.get("/bug")
    got = errors.from_envelope(r.json(), status=r.status_code)
    assert type(got) is errors.InternalError and "a bug" in got.message


def test_a_generation_error_event_is_generation_failed() -> None:
    from rbee_fabric.worker.app import _error_event

    event = _error_event(RuntimeError("llama_decode returned -1"))
    got = errors.from_envelope(event.model_dump())
    assert type(got) is errors.GenerationFailed and "llama_decode returned -1" in got.message
    assert got.hint == errors.GenerationFailed.default_hint


def test_a_newer_daemons_unknown_code_stays_visible() -> None:
    got = errors.from_envelope({"error": {"code": "SOMETHING_NEW", "message": "x", "details": {"hint": "do y"}}})
    assert type(got) is errors.InternalError
    assert "SOMETHING_NEW" in got.message and got.hint == "do y"


def _cli_raising(exc: BaseException) -> typer.Typer:
    app = typer.Typer(cls=RbeeGroup)

    @app.callback()
    def root() -> None:
        pass

    @app.command()
    def boom() -> None:
        raise exc

    return app


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.code)
def test_every_class_reads_the_same_in_the_cli(cls: type[errors.RbeeError]) -> None:
    r = CliRunner().invoke(_cli_raising(cls("it broke: 42")), ["boom"])
    assert r.exit_code == cls.exit_code
    assert r.stdout == ""
    if cls is errors.RequestCanceled:  # Ctrl+C: the message alone, as after "Canceled."
        assert r.stderr.strip() == "it broke: 42"
        return
    lines = r.stderr.splitlines()
    assert lines[0] == f"error {cls.code}: it broke: 42"
    assert lines[1] == f"Suggestion: {cls.default_hint}"
    assert "Traceback" not in r.stderr


def test_a_bug_in_the_cli_is_one_line_and_a_suggestion_never_a_traceback(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RBEE_DATA_DIR", str(tmp_path))
    r = CliRunner().invoke(_cli_raising(KeyError("surprise")), ["boom"])
    assert r.exit_code == 1
    assert r.stderr.splitlines()[0] == "error INTERNAL_ERROR: KeyError: 'surprise'"
    assert r.stderr.splitlines()[1].startswith("Suggestion: run again with --debug")
    assert "Traceback" not in r.stderr
    assert "KeyError: 'surprise'" in (tmp_path / "logs" / "keeper.log").read_text()


def test_ctrl_c_anywhere_in_a_command_exits_130() -> None:
    r = CliRunner().invoke(_cli_raising(KeyboardInterrupt()), ["boom"])
    assert r.exit_code == 130 and r.stderr.strip() == "Canceled."


def test_click_usage_errors_read_like_every_other_error_exit_2() -> None:
    from rbee_fabric.cli.app import app

    for args, message, where in (
        (["infer", "-m", "gemma3-270m", "--max-tokens", "0"], "Invalid value for '--max-tokens'", "rbee infer"),
        (["--bogus"], "No such option: --bogus", "rbee"),
        (["modls", "list"], "No such command 'modls'. Did you mean 'models'", "rbee"),
        (["models", "pull"], "Missing argument 'MODEL'.", "rbee models pull"),
    ):
        r = CliRunner().invoke(app, args)
        assert r.exit_code == 2, r.stderr
        first, suggestion = r.stderr.splitlines()
        assert first.startswith(f"error INVALID_REQUEST: {message}"), first
        assert suggestion == f"Suggestion: {where} --help lists its options and arguments"


def test_a_group_without_a_command_shows_its_help() -> None:
    from rbee_fabric.cli.app import app

    r = CliRunner().invoke(app, ["models"])
    assert r.exit_code == 2 and "Commands:" in r.output and "pull" in r.output


def test_a_registry_that_cannot_be_opened_is_config_invalid_outside_any_flow(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`workers list` opens the registry before its flow runs: still one line and a Suggestion."""
    from rbee_fabric.cli.app import app

    (tmp_path / "registry.db").mkdir()  # a directory where the database file should be
    monkeypatch.setenv("RBEE_DATA_DIR", str(tmp_path))
    r = CliRunner().invoke(app, ["workers", "list"])
    assert r.exit_code == 2
    assert r.stderr.splitlines()[0] == (
        f"error CONFIG_INVALID: cannot use the registry {tmp_path / 'registry.db'}: unable to open database file"
    )
    assert r.stderr.splitlines()[1].startswith(f"Suggestion: {tmp_path} must be a directory you can write")
    assert "Traceback" not in r.stderr


async def test_a_newer_hive_with_more_health_fields_reads_as_version_mismatch() -> None:
    """Version skew: a hive that adds health fields (and another status word) still
    proves its key and parses, so the keeper says VERSION_MISMATCH, not a validation error."""
    from rbee_fabric.httpserver import health_proof
    from rbee_fabric.keeper import hivectl
    from rbee_fabric.keeper.client import HiveClient

    key = "k" * 32
    newer = FastAPI()

    @newer.get("/v1/health")
    async def health(nonce: str | None = None) -> dict[str, object]:
        return {"status": "degraded", "version": "9.0.0", "api_version": "2", "gpu_temp_c": 61,
                "uptime_s": 12.5, **health_proof(key, nonce)}  # fmt: skip

    @newer.get("/v1/models")
    async def models() -> dict[str, object]:
        return {"catalog": []}  # a renamed field: an answer this keeper cannot read

    hive = HiveClient("http://mac.home.arpa:9200", key, "mac", "~/.config/rbee/api_key")
    await hive.http.aclose()
    hive.http = httpx.AsyncClient(transport=httpx.ASGITransport(app=newer), base_url=hive.base_url)
    try:
        got = await hive.health()
        assert got.version == "9.0.0"
        with pytest.raises(errors.VersionMismatch) as exc:
            hivectl.check_version(got, "mac")
        with pytest.raises(errors.VersionMismatch) as unreadable:
            await hive.models()
    finally:
        await hive.aclose()
    assert "9.0.0" in exc.value.message and exc.value.hint == "upgrade the node: rbee nodes install mac --upgrade"
    assert "answered in a form this keeper" in unreadable.value.message
    assert unreadable.value.hint == "install the keeper's version on the node: rbee nodes install mac --upgrade"
