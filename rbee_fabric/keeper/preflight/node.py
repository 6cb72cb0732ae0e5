"""One node's checks: connect, read the facts concurrently, judge them in a fixed order."""

from __future__ import annotations

import asyncio
import dataclasses
from urllib.parse import urlsplit

import rbee_fabric.keeper.preflight.facts as facts
import rbee_fabric.keeper.preflight.verdicts as verdicts
from rbee_fabric import modelref
from rbee_fabric.errors import (
    ForeignListener,
    HostKeyChanged,
    HostKeyUnknown,
    InvalidApiKey,
    NodeUnreachable,
    RbeeError,
    SshAuthFailed,
    VersionMismatch,
)
from rbee_fabric.keeper import hivectl
from rbee_fabric.keeper.client import Unreachable
from rbee_fabric.keeper.preflight.adapter import NodeAccess
from rbee_fabric.keeper.preflight.report import NodeReport
from rbee_fabric.keeper.transport import Transport

DEFAULT_CTX = 2048


async def check_node(access: NodeAccess, r: NodeReport, model: str | None) -> None:
    """Fill r with every check of one node (raises only what the caller turns into a failure)."""
    n, c = access.node, access.connector
    if not n.local:
        if not verdicts.connection(r, n, await _connect(access)):
            return
        if n.network == "direct":
            r.add("network", "warn", "direct: the API key and prompts cross the LAN in plain HTTP",
                  'use network = "tunnel" (SSH) unless every machine on the LAN is trusted')  # fmt: skip
        verdicts.file_copy(r, await facts.copy_file(c))
    sys_python = await access.system_python()
    data = await c.expand(n.install_dir)
    host = urlsplit(await access.transport.hive_url()).hostname or "127.0.0.1"
    hive = NodeReport(n.name, n.reach)  # the hive's checks, listed after the install's
    async with asyncio.TaskGroup() as tg:
        py = tg.create_task(facts.python(sys_python).read(c))
        ram = tg.create_task(facts.RAM.read(c))
        gpus = tg.create_task(facts.GPUS.read(c))
        uname = tg.create_task(facts.UNAME.read(c))
        cpu = tg.create_task(facts.CPU.read(c))
        disk = tg.create_task(facts.disk(f"{data}/models").read(c))
        running = tg.create_task(_hive_checks(access.transport, hive, host))
        venv = tg.create_task(access.venv_python())
    verdicts.python(r, n, py.result(), sys_python)
    model_path, alias = await _model_target(access.transport, model, running.result())
    request = facts.ProbeRequest(host, n.hive_port, verdicts.WORKER_PORTS, data, model_path, DEFAULT_CTX, alias)
    found = await facts.probe(venv.result() or sys_python, request).read(c)
    if venv.result() is None:  # what the system Python may have found is not rbee's install
        found = dataclasses.replace(found, installed=None, llama_backend=None, safe_mode=None)
    is_installed = verdicts.installed(r, n, found, venv.result() is not None)
    r.checks.extend(hive.checks)
    verdicts.ports(r, n, host, found, running.result())
    verdicts.disk(r, f"{data}/models", disk.result())
    res = verdicts.resources(ram.result(), gpus.result(), uname.result(), found.llama_backend, disk.result())
    verdicts.ram(r, res)
    verdicts.backends(r, n, res, found.llama_backend if is_installed else None)
    verdicts.cpu(r, n, cpu.result(), found, data)
    if model is not None:
        verdicts.model(r, model, found, is_installed, res)


async def _connect(access: NodeAccess) -> RbeeError | None:
    """Connect as ssh would (SSH config: aliases, ProxyJump); the error, if any."""
    try:
        await access.connector.connect()
    except (HostKeyUnknown, HostKeyChanged, SshAuthFailed, NodeUnreachable) as exc:
        return exc
    return None


async def _hive_checks(t: Transport, r: NodeReport, host: str) -> bool:
    """The hive's health, version and key (hivectl's own checks); True when one runs."""
    hive = await hivectl.connect_hive(t)
    try:
        try:
            health = await hivectl.proven_health(t, hive, 3.0)
        except InvalidApiKey as exc:  # our hive, proven to hold another key (none was sent)
            r.add("hive", "pass", f"running, {host}:{t.node.hive_port}")
            r.add("api key", "fail", exc.message, exc.hint)
            return True
        except Unreachable:
            r.add("hive", "warn", "not running (the keeper starts it on demand)",
                  f"rbee hive start {t.node.name}")  # fmt: skip
            return False
        except VersionMismatch as exc:
            r.add("hive", "fail", exc.message, exc.hint)
            return True
        except ForeignListener as exc:
            r.add("hive", "fail", exc.message, exc.hint)
            return False
        try:
            hivectl.check_version(health, t.node.name)
        except VersionMismatch as exc:
            r.add("hive", "fail", exc.message, exc.hint)
        else:
            r.add("hive", "pass", f"healthy, {health.version}, {host}:{t.node.hive_port}")
        try:
            await hive.workers()
            r.add("api key", "pass", "accepted")
        except InvalidApiKey as exc:
            r.add("api key", "fail", exc.message, exc.hint)
        except RbeeError as exc:
            r.add("api key", "warn", exc.message)
        return True
    finally:
        await hive.aclose()


async def _model_target(t: Transport, model: str | None, hive_running: bool) -> tuple[str | None, str | None]:
    """The model file to read on the node, or the demo module whose chunks to size."""
    if model is None:
        return None, None
    ref = modelref.parse(model)
    if ref.kind == "file":
        return ref.path, None
    path = await _catalog_path(t, ref.canonical) if hive_running else None
    if path is not None or ref.kind != "alias":
        return path, None
    return None, modelref.ALIASES[ref.raw][1]


async def _catalog_path(t: Transport, reference: str) -> str | None:
    hive = await hivectl.connect_hive(t)
    try:
        models = (await hive.models()).models
    except RbeeError:
        return None
    finally:
        await hive.aclose()
    return next((m.path for m in models if m.reference == reference), None)


__all__ = ["check_node"]
