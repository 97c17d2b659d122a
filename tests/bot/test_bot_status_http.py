"""The operator's HTTP endpoint ([http] port): /healthz and /metrics of a running bot, scraped over
loopback while real jobs run through the real engine worker.

What a broken endpoint would get wrong, asked here: /healthz reports each part (gateway, workers,
database) and turns 503 naming the part that is down; /metrics counts each job's end by kind and outcome
and each refusal by reason, and shows the workers' states as they are at the scrape.
"""

from __future__ import annotations

import json
import socket

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from bot.config import ConfigError
from bot.status_http import StatusServer
from tests.bot.bot_world import BotWorld, eventually, is_result

pytestmark = pytest.mark.asyncio(loop_scope="module")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


PORT = _free_port()
CONFIG_OVERRIDES = {"http": {"port": PORT}}
BASE = f"http://127.0.0.1:{PORT}"


async def _get(path: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as session, session.get(BASE + path) as response:
        return response.status, await response.text()


async def _samples() -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    status, text = await _get("/metrics")
    assert status == 200
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def _value(samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


async def test_healthz_reports_every_part_up(world: BotWorld) -> None:
    status, text = await _get("/healthz")
    assert status == 200, text
    body = json.loads(text)
    assert body["ok"] is True
    assert body["discord"]["ok"] is True
    assert body["database"] == {"ok": True}
    assert body["workers"]["workers"] == [{"name": "worker-0", "device": "cpu", "state": "idle"}]


async def test_metrics_count_jobs_by_outcome_and_refusals_by_reason(world: BotWorld) -> None:
    before = await _samples()
    user = world.user("metric-mia")
    drawn = await world.run(user, world.general, "imagine", prompt="a green cone")
    await world.final(drawn, is_result, timeout=60)
    blocked = await world.run(user, world.general, "imagine", prompt="something forbidden")
    assert blocked.original is not None and "does not accept" in blocked.original.content
    answered = await world.run(user, world.general, "chat", message="hello")
    await world.final(answered, lambda m: "Queued" not in m.content and "▌" not in m.content, timeout=60)

    async def counted() -> dict:
        # A job is counted when its follower ends, just after the final edit the user sees.
        samples = await _samples()
        done = _value(samples, "janus_jobs_total", kind="understand", outcome="done")
        return samples if done > _value(before, "janus_jobs_total", kind="understand", outcome="done") else {}

    after = await eventually(counted, timeout=15)

    def delta(name: str, **labels: str) -> float:
        return _value(after, name, **labels) - _value(before, name, **labels)

    assert delta("janus_jobs_total", kind="generate", outcome="done") == 1
    assert delta("janus_jobs_total", kind="understand", outcome="done") == 1
    assert delta("janus_jobs_total", kind="generate", outcome="failed") == 0
    assert delta("janus_refusals_total", reason="BlockedPrompt") == 1
    assert delta("janus_job_seconds_count", kind="generate") == 1
    assert (
        _value(after, "janus_worker_state", worker="worker-0", device="cpu", janus_worker_state="idle") == 1
    )
    assert (
        _value(after, "janus_worker_state", worker="worker-0", device="cpu", janus_worker_state="busy") == 0
    )
    assert _value(after, "janus_queue_depth") == 0
    assert _value(after, "janus_discord_ready") == 1 and _value(after, "janus_engine_up") == 1
    assert _value(after, "janus_images_per_second") > 0  # one image in the last minute


async def test_a_port_in_use_is_a_config_error(world: BotWorld) -> None:
    with pytest.raises(ConfigError, match=rf"http.port: cannot listen on 127.0.0.1:{PORT}"):
        await StatusServer(world.bot, "127.0.0.1", PORT).start()  # the bot's own server holds it


async def test_healthz_turns_503_naming_the_part_that_is_down(world: BotWorld) -> None:
    # Last in the module: the engine stops (as when its workers cannot be restarted) and stays stopped.
    await world.engine.stop()
    status, text = await _get("/healthz")
    assert status == 503
    body = json.loads(text)
    assert body["ok"] is False and body["workers"]["ok"] is False
    assert body["workers"]["workers"][0]["state"] == "stopped"
    assert body["discord"]["ok"] is True and body["database"]["ok"] is True  # the others still up
    samples = await _samples()
    assert (
        _value(samples, "janus_worker_state", worker="worker-0", device="cpu", janus_worker_state="stopped")
        == 1
    )
