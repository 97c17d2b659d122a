"""The operator's HTTP endpoint: ``GET /healthz`` and ``GET /metrics``, on 127.0.0.1 unless told otherwise.

Off by default (``[http] port = 0``). The bot starts it in ``setup_hook`` and stops it in ``close``:

- ``/healthz`` answers 200 when the gateway session is ready, at least one engine worker is up (idle or
  busy) and the database answers a query; 503 otherwise. The JSON body says which part is down and why
  (an error's class only, never a message that could carry a URL or a path), for a load balancer, a
  container health check or a person with curl.
- ``/metrics`` is Prometheus' text format (:mod:`bot.metrics`): queue depth, jobs by kind and outcome,
  job and step times, images/s, each worker's state and restarts, refusals by reason, Discord latency.

aiohttp is discord.py's own HTTP library, so this adds no web framework. Every check has a short
timeout: a scrape never hangs on a stuck engine or database.
"""

from __future__ import annotations

import asyncio
import logging
import math
from typing import TYPE_CHECKING, Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from bot.config import ConfigError

if TYPE_CHECKING:
    from bot.app import JanusBot

log = logging.getLogger(__name__)

CHECK_TIMEOUT_S = 2.0
UP_STATES = ("idle", "busy")


class StatusServer:
    """/healthz and /metrics for one bot (see the module docstring)."""

    def __init__(self, bot: JanusBot, host: str, port: int) -> None:
        self.bot = bot
        self.host = host
        self.port = port
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        """Listen; a port already in use (or a host that is not this machine's) is a ConfigError."""
        app = web.Application()
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/metrics", self._metrics)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        try:
            await web.TCPSite(runner, self.host, self.port).start()
        except OSError as exc:
            await runner.cleanup()
            raise ConfigError(
                f"http.port: cannot listen on {self.host}:{self.port}: {exc.strerror or exc}"
            ) from None
        self._runner = runner
        log.info("health and metrics on http://%s:%d/healthz and /metrics", self.host, self.port)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # ---- the checks ------------------------------------------------------------------------------------

    def _discord(self) -> dict[str, Any]:
        ready = self.bot.is_ready() and not self.bot.is_closed()
        latency = self.bot.latency
        return {"ok": ready, "latency_s": round(latency, 4) if math.isfinite(latency) else None}

    async def _workers(self) -> dict[str, Any]:
        try:
            status = await asyncio.wait_for(self.bot.engine.status(), CHECK_TIMEOUT_S)
        except Exception as exc:  # a stopped or unreachable engine is "down", with its class as the reason
            self.bot.metrics.set_engine(None)
            return {"ok": False, "error": type(exc).__name__}
        self.bot.metrics.set_engine(status)
        workers = [{"name": w.name, "device": w.device, "state": w.state} for w in status.workers]
        up = any(w.state in UP_STATES for w in status.workers)
        return {"ok": up, "workers": workers, "queue_depth": status.queue_depth, "running": status.running}

    async def _database(self) -> dict[str, Any]:
        try:
            await asyncio.wait_for(self.bot.store.ping(), CHECK_TIMEOUT_S)
        except Exception as exc:
            return {"ok": False, "error": type(exc).__name__}
        return {"ok": True}

    # ---- the handlers ----------------------------------------------------------------------------------

    async def _healthz(self, request: web.Request) -> web.Response:
        workers, database = await asyncio.gather(self._workers(), self._database())
        parts = {"discord": self._discord(), "workers": workers, "database": database}
        ok = all(part["ok"] for part in parts.values())
        return web.json_response({"ok": ok, **parts}, status=200 if ok else 503)

    async def _metrics(self, request: web.Request) -> web.Response:
        await self._workers()  # the engine gauges, read now
        discord = self._discord()
        self.bot.metrics.set_discord(ready=discord["ok"], latency_s=self.bot.latency)
        return web.Response(body=self.bot.metrics.render(), headers={"Content-Type": CONTENT_TYPE_LATEST})
