"""Jobs: every /imagine and /describe request, kept so that buttons on old messages work after restarts."""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping
from typing import Any

from sqlalchemy import insert, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from bot.store.base import UNSHARDED_OWNER, StoreBase, json_dict
from bot.store.errors import JobNotFound
from bot.store.models import Job, utcnow
from bot.store.records import JobKind, JobRecord, JobStatus
from bot.store.rows import job_record, job_select
from janus_engine.errors import InvalidRequest


class JobsMixin(StoreBase):
    """Job records: created queued, then running, then ended once."""

    async def create_job(
        self,
        kind: JobKind,
        *,
        user_id: int,
        guild_id: int | None,
        channel_id: int | None,
        prompt: str,
        params: Mapping[str, Any] | None = None,
        seed: int | None = None,
        job_id: str | None = None,
    ) -> JobRecord:
        """Record a new job with status queued; the id (generated unless given) goes into custom_ids."""
        _check_seed(seed)
        record = JobRecord(
            id=job_id or uuid.uuid4().hex,
            kind=JobKind(kind),
            user_id=user_id,
            guild_id=guild_id,
            channel_id=channel_id,
            prompt=prompt,
            params=json_dict(params or {}, "job parameters"),
            seed=seed,
            status=JobStatus.QUEUED,
            error=None,
            created_at=utcnow(),
            started_at=None,
            finished_at=None,
            owner=self.owner,
        )
        try:
            async with self._write() as conn:
                await conn.execute(
                    insert(Job).values(
                        id=record.id,
                        kind=record.kind.value,
                        user_id=user_id,
                        guild_id=guild_id,
                        channel_id=channel_id,
                        prompt=prompt,
                        params=record.params,
                        seed=seed,
                        status=record.status.value,
                        error=None,
                        timings={},
                        message_ids=[],
                        created_at=record.created_at,
                        owner=self.owner,
                    )
                )
        except IntegrityError as exc:
            raise InvalidRequest(f"A job with id {record.id} already exists.") from exc
        return record

    async def mark_job_running(self, job_id: str) -> JobRecord:
        """Queued -> running (with its start time). A job that already ended stays as it is."""
        async with self._write() as conn:
            await conn.execute(
                update(Job)
                .where(Job.id == job_id, Job.status == JobStatus.QUEUED.value)
                .values(status=JobStatus.RUNNING.value, started_at=utcnow())
            )
            return await _require_job(conn, job_id)

    async def finish_job(
        self,
        job_id: str,
        status: JobStatus,
        *,
        error: str | None = None,
        seed: int | None = None,
        timings: Mapping[str, float] | None = None,
        message_ids: Iterable[int] = (),
    ) -> JobRecord:
        """End a job: done, failed (with ``error``) or cancelled. The first ending wins: a cancel that
        races a finished job does not turn it into a cancelled one; timings and messages are still added."""
        status = JobStatus(status)
        _check_seed(seed)
        if not status.is_terminal:
            raise InvalidRequest(f"finish_job needs a final status, not {status.value}.")
        async with self._write() as conn:
            current = await _require_job(conn, job_id)
            values: dict[str, Any] = {
                "timings": {**current.timings, **{k: float(v) for k, v in (timings or {}).items()}},
                "message_ids": list(dict.fromkeys([*current.message_ids, *(int(m) for m in message_ids)])),
            }
            if not current.status.is_terminal:
                values.update(status=status.value, error=error, finished_at=utcnow())
                if seed is not None:
                    values["seed"] = seed
            await conn.execute(update(Job).where(Job.id == job_id).values(**values))
            return await _require_job(conn, job_id)

    async def add_job_messages(self, job_id: str, message_ids: Iterable[int]) -> JobRecord:
        async with self._write() as conn:
            current = await _require_job(conn, job_id)
            merged = list(dict.fromkeys([*current.message_ids, *(int(m) for m in message_ids)]))
            await conn.execute(update(Job).where(Job.id == job_id).values(message_ids=merged))
            return await _require_job(conn, job_id)

    async def get_job(self, job_id: str) -> JobRecord | None:
        async with self._query() as conn:
            row = (await conn.execute(job_select().where(Job.id == job_id))).first()
        return None if row is None else job_record(row)

    async def list_jobs(
        self,
        *,
        user_id: int | None = None,
        guild_id: int | None = None,
        statuses: Iterable[JobStatus] | None = None,
        limit: int = 20,
    ) -> list[JobRecord]:
        """Newest first."""
        stmt = job_select().order_by(Job.created_at.desc(), Job.id.desc()).limit(limit)
        if user_id is not None:
            stmt = stmt.where(Job.user_id == user_id)
        if guild_id is not None:
            stmt = stmt.where(Job.guild_id == guild_id)
        if statuses is not None:
            stmt = stmt.where(Job.status.in_([JobStatus(s).value for s in statuses]))
        async with self._query() as conn:
            return [job_record(row) for row in (await conn.execute(stmt)).all()]

    async def fail_interrupted_jobs(
        self, reason: str = "The bot restarted before this job finished."
    ) -> list[JobRecord]:
        """At start: this process's jobs still queued or running belong to its previous life; mark them
        failed. Jobs of the other bot processes sharing the database (another ``owner``) are theirs and
        may be running right now: they are left alone. Jobs without an owner (from before jobs had one)
        and, in a sharded process, the unsharded owner's jobs (the install ran as one process before)
        have no other process to close them, so this one does.

        Returns them as they now are (with the ids of the messages that were showing their progress), so
        that the bot can tell their users instead of leaving a progress bar that never moves again."""
        active = [JobStatus.QUEUED.value, JobStatus.RUNNING.value]
        mine = or_(Job.owner.is_(None), Job.owner.in_({self.owner, UNSHARDED_OWNER}))
        async with self._write() as conn:
            query = select(Job.id).where(Job.status.in_(active), mine)
            ids = list((await conn.execute(query)).scalars())
            if not ids:
                return []
            await conn.execute(
                update(Job)
                .where(Job.id.in_(ids))
                .values(status=JobStatus.FAILED.value, error=reason, finished_at=utcnow())
            )
            rows = (await conn.execute(job_select().where(Job.id.in_(ids)).order_by(Job.created_at))).all()
            return [job_record(row) for row in rows]


async def _require_job(conn: AsyncConnection, job_id: str) -> JobRecord:
    row = (await conn.execute(job_select().where(Job.id == job_id))).first()
    if row is None:
        raise JobNotFound("That job is no longer stored.")
    return job_record(row)


def _check_seed(seed: int | None) -> None:
    """Seeds are stored as signed 64-bit integers (BIGINT on every backend)."""
    if seed is not None and not -(2**63) <= seed < 2**63:
        raise InvalidRequest("The seed must be an integer between 0 and 9223372036854775807.")
