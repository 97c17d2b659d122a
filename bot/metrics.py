"""The bot's Prometheus metrics: what the operator's ``/metrics`` scrape shows (:mod:`bot.status_http`).

Counters are counted where things happen (:func:`bot.delivery.follow_job` for every accepted job's end,
:meth:`bot.app.JanusBot.report_error` for every refusal); gauges are read from the engine's status and
the gateway at scrape time, so a scrape never sees a figure older than itself. Each bot has its own
registry (not prometheus_client's global one), so several bots in one process (tests) never collide.
"""

from __future__ import annotations

import math
import time

from prometheus_client import CollectorRegistry, Counter, Enum, Gauge, Histogram, generate_latest

from janus_engine.status import EngineStatus

WORKER_STATES = ["starting", "idle", "busy", "restarting", "failed", "stopped"]
# submit -> end of a job: images take tens of seconds on a GPU, minutes on a CPU; chat a second or two
JOB_SECONDS_BUCKETS = (0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600, math.inf)


class BotMetrics:
    """One bot process's metrics (``janus_`` prefix)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.jobs = Counter(
            "janus_jobs", "Jobs this bot process followed to their end", ["kind", "outcome"], registry=r
        )
        self.job_seconds = Histogram(
            "janus_job_seconds", "Seconds from submit to the job's end", ["kind"],
            buckets=JOB_SECONDS_BUCKETS, registry=r,
        )  # fmt: skip
        self.refusals = Counter(
            "janus_refusals", "Commands refused with a message, by reason", ["reason"], registry=r
        )
        self.queue_depth = Gauge("janus_queue_depth", "Jobs waiting in the engine's queue", registry=r)
        self.running = Gauge("janus_jobs_running", "Jobs the engine's workers are running", registry=r)
        self.images_per_s = Gauge(
            "janus_images_per_second", "Images generated per second (last minute)", registry=r
        )
        self.tokens_per_s = Gauge(
            "janus_tokens_per_second", "Text tokens per second (last minute)", registry=r
        )
        self.step_seconds = Gauge("janus_step_seconds", "Recent image decoding step time", registry=r)
        self.worker_state = Enum(
            "janus_worker_state", "Each engine worker's state", ["worker", "device"],
            states=WORKER_STATES, registry=r,
        )  # fmt: skip
        self.worker_restarts = Gauge(
            "janus_worker_restarts", "Times each worker was restarted", ["worker", "device"], registry=r
        )
        self.engine_up = Gauge("janus_engine_up", "1 when the engine answered this scrape", registry=r)
        self.discord_latency = Gauge(
            "janus_discord_latency_seconds", "Gateway heartbeat latency (NaN before the first)", registry=r
        )
        self.discord_ready = Gauge("janus_discord_ready", "1 when the gateway session is ready", registry=r)
        self.uptime = Gauge("janus_uptime_seconds", "Seconds since this bot process started", registry=r)
        self._started = time.monotonic()

    def job_ended(self, kind: str, outcome: str, seconds: float) -> None:
        self.jobs.labels(kind, outcome).inc()
        self.job_seconds.labels(kind).observe(seconds)

    def refused(self, reason: str) -> None:
        self.refusals.labels(reason).inc()

    def set_engine(self, status: EngineStatus | None) -> None:
        """The engine's snapshot (None: the engine did not answer)."""
        self.engine_up.set(0 if status is None else 1)
        if status is None:
            return
        self.queue_depth.set(status.queue_depth)
        self.running.set(status.running)
        self.images_per_s.set(status.images_per_s)
        self.tokens_per_s.set(status.tokens_per_s)
        self.step_seconds.set(status.avg_step_s if status.avg_step_s is not None else math.nan)
        for worker in status.workers:
            self.worker_state.labels(worker.name, worker.device).state(worker.state)
            self.worker_restarts.labels(worker.name, worker.device).set(worker.restarts)

    def set_discord(self, *, ready: bool, latency_s: float) -> None:
        self.discord_ready.set(1 if ready else 0)
        self.discord_latency.set(latency_s if math.isfinite(latency_s) else math.nan)

    def render(self) -> bytes:
        self.uptime.set(time.monotonic() - self._started)
        return generate_latest(self.registry)
