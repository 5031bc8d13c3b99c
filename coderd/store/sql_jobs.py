"""The provisioner job queue and daemons part of the SQL store."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from typing import Any

from coderd.store.base import Conflict, Daemon, Job, JobStatus, LogLine, tags_match
from coderd.store.db import Tx
from coderd.store.sql_core import SqlCore
from coderd.store.sql_rows import ACQUIRE_SCAN, _daemon, _insert_job, _job, _job_row, _json, _log


class JobsSql(SqlCore):
    """The provisioner job queue and daemons part of the SQL store."""

    async def enqueue_job(
        self, kind: str, input: Mapping[str, Any], tags: Mapping[str, str]
    ) -> Job:
        now = time.time()

        async def q(tx: Tx) -> Job:
            return await _insert_job(tx, kind, input, tags, now)

        return await self._tx(q, write=True)

    async def acquire_job(self, daemon_id: str, tags: Mapping[str, str]) -> Job | None:
        async def q(tx: Tx) -> Job | None:
            now = time.time()
            rows = await tx.fetchall(
                "SELECT id, tags FROM provisioner_jobs"
                " WHERE started_at IS NULL AND completed_at IS NULL"
                " ORDER BY created_at, id LIMIT ?",
                ACQUIRE_SCAN,
            )
            for row in rows:
                if not tags_match(json.loads(row["tags"]), tags):
                    continue
                if tx.dialect == "postgres":
                    locked = await tx.fetchone(
                        "SELECT id FROM provisioner_jobs WHERE id = ? AND started_at IS NULL"
                        " AND completed_at IS NULL FOR UPDATE SKIP LOCKED",
                        row["id"],
                    )
                    if locked is None:
                        continue
                taken = await tx.execute(
                    "UPDATE provisioner_jobs SET started_at = ?, heartbeat_at = ?, daemon_id = ?"
                    " WHERE id = ? AND started_at IS NULL AND completed_at IS NULL",
                    now,
                    now,
                    daemon_id,
                    row["id"],
                )
                if taken == 1:
                    return _job(await _job_row(tx, row["id"]))
            return None

        return await self._tx(q, write=True)

    async def append_job_logs(self, job_id: str, lines: list[LogLine]) -> list[LogLine]:
        now = time.time()

        async def q(tx: Tx) -> list[LogLine]:
            stored: list[LogLine] = []
            for line in lines:
                row = await tx.fetchone(
                    "INSERT INTO provisioner_job_logs (job_id, created_at, level, stage, output)"
                    " VALUES (?, ?, ?, ?, ?) RETURNING id",
                    job_id,
                    line.created_at or now,
                    line.level,
                    line.stage,
                    line.output,
                )
                assert row is not None
                stored.append(
                    LogLine(
                        id=int(row["id"]),
                        created_at=line.created_at or now,
                        level=line.level,
                        stage=line.stage,
                        output=line.output,
                    )
                )
            return stored

        return await self._tx(q, write=True)

    async def heartbeat_job(self, job_id: str, daemon_id: str) -> bool:
        now = time.time()

        async def q(tx: Tx) -> bool:
            row = await _job_row(tx, job_id, lock=True)
            if row["completed_at"] is not None or row["daemon_id"] != daemon_id:
                raise Conflict(f"job {job_id} is not running on daemon {daemon_id}")
            await tx.execute(
                "UPDATE provisioner_jobs SET heartbeat_at = ? WHERE id = ?", now, job_id
            )
            return row["cancel_requested_at"] is not None

        return await self._tx(q, write=True)

    async def complete_job(
        self,
        job_id: str,
        *,
        result: Mapping[str, Any] | None,
        error: str | None,
    ) -> Job:
        now = time.time()

        async def q(tx: Tx) -> Job:
            row = await _job_row(tx, job_id, lock=True)
            if row["completed_at"] is not None:
                raise Conflict(f"job {job_id} is already done")
            await tx.execute(
                "UPDATE provisioner_jobs SET completed_at = ?, result = ?, error = ?,"
                " started_at = COALESCE(started_at, ?) WHERE id = ?",
                now,
                None if result is None else _json(dict(result)),
                error,
                now,
                job_id,
            )
            return _job(await _job_row(tx, job_id))

        return await self._tx(q, write=True)

    async def request_cancel(self, job_id: str) -> Job:
        now = time.time()

        async def q(tx: Tx) -> Job:
            row = await _job_row(tx, job_id, lock=True)
            if row["completed_at"] is not None:
                return _job(row)
            if row["started_at"] is None:
                await tx.execute(
                    "UPDATE provisioner_jobs SET cancel_requested_at = ?, completed_at = ?,"
                    " error = ? WHERE id = ?",
                    now,
                    now,
                    "canceled before it started",
                    job_id,
                )
            elif row["cancel_requested_at"] is None:
                await tx.execute(
                    "UPDATE provisioner_jobs SET cancel_requested_at = ? WHERE id = ?",
                    now,
                    job_id,
                )
            return _job(await _job_row(tx, job_id))

        return await self._tx(q, write=True)

    async def redact_job_input(self, job_id: str, keys: tuple[str, ...]) -> None:
        async def q(tx: Tx) -> None:
            row = await tx.fetchone(
                "SELECT input, completed_at FROM provisioner_jobs WHERE id = ?", job_id
            )
            if row is None or row["completed_at"] is None:
                return
            data = json.loads(row["input"])
            if any(k in data for k in keys):
                kept = {k: v for k, v in data.items() if k not in keys}
                await tx.execute(
                    "UPDATE provisioner_jobs SET input = ? WHERE id = ?", _json(kept), job_id
                )

        await self._tx(q, write=True)

    async def fail_stale_jobs(self, heartbeat_timeout: float) -> list[str]:
        now = time.time()

        async def q(tx: Tx) -> list[str]:
            rows = await tx.fetchall(
                "SELECT id FROM provisioner_jobs WHERE started_at IS NOT NULL"
                " AND completed_at IS NULL AND heartbeat_at < ?",
                now - heartbeat_timeout,
            )
            failed: list[str] = []
            for r in rows:
                changed = await tx.execute(
                    "UPDATE provisioner_jobs SET completed_at = ?, error = ?"
                    " WHERE id = ? AND completed_at IS NULL AND heartbeat_at < ?",
                    now,
                    f"provisioner daemon stopped heartbeating for {heartbeat_timeout:g}s",
                    r["id"],
                    now - heartbeat_timeout,
                )
                if changed:
                    failed.append(r["id"])
            return failed

        return await self._tx(q, write=True)

    async def get_job(self, job_id: str) -> Job | None:
        return await self._one(_job, "SELECT * FROM provisioner_jobs WHERE id = ?", job_id)

    async def get_job_logs(self, job_id: str, after_id: int = 0) -> list[LogLine]:
        return await self._all(
            _log,
            "SELECT * FROM provisioner_job_logs WHERE job_id = ? AND id > ? ORDER BY id",
            job_id,
            after_id,
        )

    async def count_jobs_by_status(self) -> dict[str, int]:
        async def q(tx: Tx) -> dict[str, int]:
            rows = await tx.fetchall("SELECT * FROM provisioner_jobs WHERE completed_at IS NULL")
            counts = {s.value: 0 for s in JobStatus}
            for r in rows:
                counts[_job(r).status.value] += 1
            done = await tx.fetchall(
                "SELECT (error IS NULL) AS ok, (cancel_requested_at IS NOT NULL) AS canceled,"
                " COUNT(*) AS n FROM provisioner_jobs WHERE completed_at IS NOT NULL"
                " GROUP BY (error IS NULL), (cancel_requested_at IS NOT NULL)"
            )
            for r in done:
                if r["ok"]:
                    counts[JobStatus.SUCCEEDED.value] += int(r["n"])
                elif r["canceled"]:
                    counts[JobStatus.CANCELED.value] += int(r["n"])
                else:
                    counts[JobStatus.FAILED.value] += int(r["n"])
            return counts

        return await self._tx(q)

    async def upsert_daemon(self, daemon_id: str, name: str, tags: Mapping[str, str]) -> Daemon:
        now = time.time()

        async def q(tx: Tx) -> Daemon:
            changed = await tx.execute(
                "UPDATE provisioner_daemons SET name = ?, tags = ?, last_seen_at = ? WHERE id = ?",
                name,
                _json(dict(tags)),
                now,
                daemon_id,
            )
            if not changed:
                await tx.execute(
                    "INSERT INTO provisioner_daemons (id, name, tags, created_at, last_seen_at)"
                    " VALUES (?, ?, ?, ?, ?)",
                    daemon_id,
                    name,
                    _json(dict(tags)),
                    now,
                    now,
                )
            row = await tx.fetchone("SELECT * FROM provisioner_daemons WHERE id = ?", daemon_id)
            assert row is not None
            return _daemon(row)

        return await self._tx(q, write=True)

    async def list_daemons(self) -> list[Daemon]:
        return await self._all(_daemon, "SELECT * FROM provisioner_daemons ORDER BY name")
