"""The users and API keys part of the SQL store."""

from __future__ import annotations

import time

from coderd.store.base import ApiKey, Conflict, User
from coderd.store.db import Tx
from coderd.store.sql_core import SqlCore
from coderd.store.sql_rows import _json, _key, _user, new_id


class UsersSql(SqlCore):
    """The users and API keys part of the SQL store."""

    async def count_users(self) -> int:
        async def q(tx: Tx) -> int:
            row = await tx.fetchone("SELECT COUNT(*) AS n FROM users")
            return int(row["n"]) if row else 0

        return await self._tx(q)

    async def create_user(
        self, username: str, email: str, hashed_password: str, roles: tuple[str, ...]
    ) -> User:
        user = User(new_id(), username, email, hashed_password, tuple(roles), time.time())

        async def q(tx: Tx) -> User:
            await _insert_user(tx, user)
            return user

        return await self._tx(q, write=True)

    async def create_first_user(self, username: str, email: str, hashed_password: str) -> User:
        user = User(new_id(), username, email, hashed_password, ("owner",), time.time())

        async def q(tx: Tx) -> User:
            if tx.dialect == "postgres":
                await tx.fetchone("SELECT pg_advisory_xact_lock(?)", 0x6669_7273)
            row = await tx.fetchone("SELECT COUNT(*) AS n FROM users")
            if row and int(row["n"]) > 0:
                raise Conflict("the first user already exists")
            await _insert_user(tx, user)
            return user

        return await self._tx(q, write=True)

    async def get_user(self, user_id: str) -> User | None:
        return await self._one(_user, "SELECT * FROM users WHERE id = ?", user_id)

    async def get_user_by_login(self, username_or_email: str) -> User | None:
        return await self._one(
            _user,
            "SELECT * FROM users WHERE username = ? OR email = ?",
            username_or_email,
            username_or_email,
        )

    async def list_users(self) -> list[User]:
        return await self._all(_user, "SELECT * FROM users ORDER BY created_at")

    async def insert_api_key(self, key: ApiKey) -> None:
        await self._exec(
            "INSERT INTO api_keys (id, user_id, hashed_secret, kind, name, created_at,"
            " expires_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
            key.id,
            key.user_id,
            key.hashed_secret,
            key.kind,
            key.name,
            key.created_at,
            key.expires_at,
        )

    async def get_api_key(self, key_id: str) -> ApiKey | None:
        return await self._one(_key, "SELECT * FROM api_keys WHERE id = ?", key_id)

    async def get_api_key_and_user(self, key_id: str) -> tuple[ApiKey, User] | None:
        async def q(tx: Tx) -> tuple[ApiKey, User] | None:
            key = await tx.fetchone("SELECT * FROM api_keys WHERE id = ?", key_id)
            if key is None:
                return None
            user = await tx.fetchone("SELECT * FROM users WHERE id = ?", key["user_id"])
            return (_key(key), _user(user)) if user else None

        return await self._tx(q)

    async def list_api_keys(self, user_id: str, kind: str) -> list[ApiKey]:
        return await self._all(
            _key,
            "SELECT * FROM api_keys WHERE user_id = ? AND kind = ? ORDER BY created_at",
            user_id,
            kind,
        )

    async def delete_api_key(self, key_id: str) -> bool:
        return await self._exec("DELETE FROM api_keys WHERE id = ?", key_id) > 0

    async def delete_expired_api_keys(self, now: float) -> int:
        return await self._exec("DELETE FROM api_keys WHERE expires_at < ?", now)


async def _insert_user(tx: Tx, user: User) -> None:
    await tx.execute(
        "INSERT INTO users (id, username, email, hashed_password, roles, created_at)"
        " VALUES (?, ?, ?, ?, ?, ?)",
        user.id,
        user.username,
        user.email,
        user.hashed_password,
        _json(list(user.roles)),
        user.created_at,
    )
