"""The templates and template versions part of the SQL store."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Mapping

from coderd.store.base import Template, TemplateVersion
from coderd.store.db import Tx
from coderd.store.sql_core import SqlCore
from coderd.store.sql_rows import _json, _template, _version, new_id


class TemplatesSql(SqlCore):
    """The templates and template versions part of the SQL store."""

    async def create_template_version(
        self,
        template_name: str,
        description: str,
        created_by: str,
        version_name: str,
        archive: bytes,
        tags: Mapping[str, str] | None = None,
    ) -> tuple[Template, TemplateVersion]:
        now = time.time()
        vtags = dict(tags or {})
        digest = hashlib.sha256(archive).hexdigest()

        async def q(tx: Tx) -> tuple[Template, TemplateVersion]:
            row = await tx.fetchone("SELECT * FROM templates WHERE name = ?", template_name)
            if row is None:
                tid = new_id()
                await tx.execute(
                    "INSERT INTO templates (id, name, description, created_by, created_at)"
                    " VALUES (?, ?, ?, ?, ?)",
                    tid,
                    template_name,
                    description,
                    created_by,
                    now,
                )
            else:
                tid = row["id"]
            count = await tx.fetchone(
                "SELECT COUNT(*) AS n FROM template_versions WHERE template_id = ?", tid
            )
            name = version_name or f"v{int(count['n']) + 1 if count else 1}"
            version = TemplateVersion(
                new_id(), tid, name, created_by, len(archive), digest, now, vtags
            )
            await tx.execute(
                "INSERT INTO template_versions (id, template_id, name, created_by, archive,"
                " archive_size, archive_sha256, created_at, tags)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                version.id,
                tid,
                name,
                created_by,
                archive,
                len(archive),
                digest,
                now,
                _json(vtags),
            )
            if description and row is not None:
                await tx.execute(
                    "UPDATE templates SET description = ? WHERE id = ?", description, tid
                )
            await tx.execute(
                "UPDATE templates SET active_version_id = ? WHERE id = ?", version.id, tid
            )
            trow = await tx.fetchone("SELECT * FROM templates WHERE id = ?", tid)
            assert trow is not None
            return _template(trow), version

        return await self._tx(q, write=True)

    async def get_template(self, id_or_name: str) -> Template | None:
        return await self._one(
            _template, "SELECT * FROM templates WHERE id = ? OR name = ?", id_or_name, id_or_name
        )

    async def list_templates(self) -> list[Template]:
        return await self._all(_template, "SELECT * FROM templates ORDER BY name")

    async def list_template_versions(self, template_id: str) -> list[TemplateVersion]:
        return await self._all(
            _version,
            "SELECT id, template_id, name, created_by, archive_size, archive_sha256,"
            " created_at, tags FROM template_versions WHERE template_id = ?"
            " ORDER BY created_at",
            template_id,
        )

    async def get_template_version(self, version_id: str) -> TemplateVersion | None:
        return await self._one(
            _version,
            "SELECT id, template_id, name, created_by, archive_size, archive_sha256,"
            " created_at, tags FROM template_versions WHERE id = ?",
            version_id,
        )

    async def get_template_archive(self, version_id: str) -> bytes | None:
        return await self._one(
            lambda r: bytes(r["archive"]),
            "SELECT archive FROM template_versions WHERE id = ?",
            version_id,
        )
