"""The Store contract, run on SQLite and on a real PostgreSQL."""

from __future__ import annotations

import time

import pytest
import trio

from coderd.store.base import ApiKey, Conflict, JobStatus, LogLine, NotFound, Store
from coderd.store.factory import Opened, open_store


async def _user(store: Store, name: str = "alice") -> str:
    return (await store.create_user(name, f"{name}@example.com", "h", ("member",))).id


async def test_migrations_are_recorded_and_not_reapplied(
    opened: Opened, db_config: dict[str, str]
) -> None:
    assert opened.migrations_applied == [1, 2, 3, 4, 5, 6]
    again = await open_store(**db_config)
    try:
        assert again.migrations_applied == []
    finally:
        await again.aclose()


async def test_users_and_first_user(opened: Opened) -> None:
    store = opened.store
    assert await store.count_users() == 0
    owner = await store.create_first_user("root", "root@example.com", "h")
    assert owner.roles == ("owner",)
    with pytest.raises(Conflict):
        await store.create_first_user("root2", "root2@example.com", "h")
    with pytest.raises(Conflict):
        await store.create_user("root", "other@example.com", "h", ("member",))
    assert (await store.get_user_by_login("root@example.com")) == owner
    assert (await store.get_user(owner.id)) == owner
    assert [u.username for u in await store.list_users()] == ["root"]


async def test_concurrent_first_user_only_one_wins(opened: Opened) -> None:
    wins: list[str] = []

    async def attempt(i: int) -> None:
        try:
            await opened.store.create_first_user(f"u{i}", f"u{i}@x", "h")
            wins.append(f"u{i}")
        except Conflict:
            pass

    async with trio.open_nursery() as n:
        for i in range(8):
            n.start_soon(attempt, i)
    assert len(wins) == 1
    assert await opened.store.count_users() == 1


async def test_api_keys(opened: Opened) -> None:
    store = opened.store
    uid = await _user(store)
    key = ApiKey("k1", uid, "hash", "token", "ci", time.time(), time.time() + 60)
    await store.insert_api_key(key)
    assert await store.get_api_key("k1") == key
    both = await store.get_api_key_and_user("k1")
    assert both is not None
    assert both[0] == key
    assert both[1].id == uid
    assert await store.get_api_key_and_user("nope") is None
    assert await store.list_api_keys(uid, "token") == [key]
    assert await store.list_api_keys(uid, "session") == []
    old = ApiKey("k2", uid, "hash", "session", "", time.time() - 10, time.time() - 5)
    await store.insert_api_key(old)
    assert await store.delete_expired_api_keys(time.time()) == 1
    assert await store.get_api_key("k2") is None
    assert await store.delete_api_key("k1")
    assert not await store.delete_api_key("k1")
    assert await store.get_api_key("k1") is None


async def test_templates_are_versioned(opened: Opened) -> None:
    store = opened.store
    uid = await _user(store)
    t1, v1 = await store.create_template_version("docker", "d", uid, "", b"tar1")
    t2, v2 = await store.create_template_version(
        "docker", "", uid, "", b"tar22", {"zone": "a"}
    )
    assert t1.id == t2.id
    assert (v1.name, v2.name) == ("v1", "v2")
    assert (v1.tags, v2.tags) == ({}, {"zone": "a"})
    assert t2.active_version_id == v2.id
    assert await store.get_template_archive(v1.id) == b"tar1"
    assert (await store.get_template_version(v2.id)) == v2
    assert v2.archive_size == 5
    assert [v.id for v in await store.list_template_versions(t1.id)] == [v1.id, v2.id]
    assert (await store.get_template("docker")) == t2
    assert (await store.get_template(t1.id)) == t2
    with pytest.raises(Conflict):
        await store.create_template_version("docker", "", uid, "v1", b"x")


async def _workspace(store: Store) -> tuple[str, str, str]:
    uid = await _user(store)
    t, v = await store.create_template_version("t", "", uid, "", b"tar")
    ws = await store.create_workspace("dev", uid, t.id)
    return uid, ws.id, v.id


async def test_workspaces_and_builds(opened: Opened) -> None:
    store = opened.store
    uid, wsid, vid = await _workspace(store)
    with pytest.raises(Conflict):
        await store.create_workspace("dev", uid, (await store.list_templates())[0].id)
    build, job = await store.create_build(
        wsid, vid, "start", uid, {"a": "1"}, {"workspace_id": wsid}, {}, "tokhash"
    )
    assert build.build_number == 1
    assert job.input["build_id"] == build.id
    assert job.kind == "workspace_build"
    with pytest.raises(Conflict, match="in progress"):
        await store.create_build(wsid, vid, "stop", uid, {}, {}, {}, "x")
    await store.complete_job(job.id, result={}, error=None)
    b2, _ = await store.create_build(wsid, vid, "stop", uid, {}, {}, {}, "x")
    assert b2.build_number == 2
    assert (await store.latest_build(wsid)) == b2
    [detail] = await store.workspace_details(owner_id=uid)
    assert detail.latest_build == b2
    assert detail.latest_job is not None
    assert detail.latest_job.id == b2.job_id
    assert (detail.owner_name, detail.template_name) == ("alice", "t")
    assert await store.workspace_details(owner_id="nobody") == []
    assert [b.id for b in await store.list_builds(wsid)] == [build.id, b2.id]
    assert (await store.get_build_by_job(job.id)) == build
    assert await store.get_build_agent_token_hash(build.id) == "tokhash"
    await store.mark_workspace_deleted(wsid)
    assert await store.list_workspaces(uid) == []
    assert (await store.get_workspace(wsid)) is not None
    # the name is free again once deleted
    await store.create_workspace("dev", uid, (await store.list_templates())[0].id)
    with pytest.raises(NotFound):
        await store.create_build("nope", vid, "start", uid, {}, {}, {}, "x")


async def test_terraform_state_per_workspace(opened: Opened) -> None:
    store = opened.store
    _, wsid, _ = await _workspace(store)
    assert await store.get_workspace_state(wsid) is None
    await store.put_workspace_state(wsid, b"\x00state1")
    await store.put_workspace_state(wsid, b"\x00state2")
    assert await store.get_workspace_state(wsid) == b"\x00state2"


async def test_job_lifecycle(opened: Opened) -> None:
    store = opened.store
    job = await store.enqueue_job("k", {"x": 1}, {"os": "linux"})
    assert job.status is JobStatus.PENDING
    assert await store.acquire_job("d1", {}) is None  # tags not satisfied
    got = await store.acquire_job("d1", {"os": "linux", "zone": "a"})
    assert got is not None
    assert got.id == job.id
    assert got.status is JobStatus.RUNNING
    assert got.daemon_id == "d1"
    assert got.input == {"x": 1}
    assert await store.acquire_job("d2", {"os": "linux"}) is None
    stored = await store.append_job_logs(job.id, [LogLine("one"), LogLine("two", level="error")])
    assert [ln.output for ln in stored] == ["one", "two"]
    assert stored[0].id < stored[1].id
    assert [ln.output for ln in await store.get_job_logs(job.id, after_id=stored[0].id)] == ["two"]
    assert await store.heartbeat_job(job.id, "d1") is False
    with pytest.raises(Conflict):
        await store.heartbeat_job(job.id, "d2")
    done = await store.complete_job(job.id, result={"ok": True}, error=None)
    assert done.status is JobStatus.SUCCEEDED
    assert done.result == {"ok": True}
    with pytest.raises(Conflict):
        await store.complete_job(job.id, result=None, error="again")
    with pytest.raises(Conflict):
        await store.heartbeat_job(job.id, "d1")
    with pytest.raises(NotFound):
        await store.complete_job("nope", result=None, error="x")
    assert (await store.get_job(job.id)) == done


async def test_jobs_are_acquired_oldest_first(opened: Opened) -> None:
    store = opened.store
    ids = [(await store.enqueue_job("k", {}, {})).id for _ in range(3)]
    got = [await store.acquire_job("d", {}) for _ in range(4)]
    assert [j.id if j else None for j in got] == [*ids, None]


async def test_cancel_pending_and_running(opened: Opened) -> None:
    store = opened.store
    pending = await store.enqueue_job("k", {}, {})
    canceled = await store.request_cancel(pending.id)
    assert canceled.status is JobStatus.CANCELED
    assert await store.acquire_job("d", {}) is None
    running = await store.enqueue_job("k", {}, {})
    assert await store.acquire_job("d", {}) is not None
    assert (await store.request_cancel(running.id)).status is JobStatus.CANCELING
    assert await store.heartbeat_job(running.id, "d") is True
    done = await store.complete_job(running.id, result=None, error="interrupted")
    assert done.status is JobStatus.CANCELED
    assert (await store.request_cancel(running.id)).status is JobStatus.CANCELED
    with pytest.raises(NotFound):
        await store.request_cancel("nope")


async def test_failed_job_and_stale_jobs(opened: Opened) -> None:
    store = opened.store
    a = await store.enqueue_job("k", {}, {})
    b = await store.enqueue_job("k", {}, {})
    await store.acquire_job("d1", {})
    await store.acquire_job("d2", {})
    await trio.sleep(0.3)
    await store.heartbeat_job(b.id, "d2")
    assert await store.fail_stale_jobs(0.2) == [a.id]
    failed = await store.get_job(a.id)
    assert failed is not None
    assert failed.status is JobStatus.FAILED
    assert failed.error
    assert "heartbeat" in failed.error
    assert await store.fail_stale_jobs(0.2) == []
    counts = await store.count_jobs_by_status()
    assert counts["failed"] == 1
    assert counts["running"] == 1


async def test_concurrent_acquire_hands_each_job_out_once(opened: Opened) -> None:
    store = opened.store
    n_jobs = 20
    for _ in range(n_jobs):
        await store.enqueue_job("k", {}, {})
    taken: list[str] = []

    async def daemon(name: str) -> None:
        for _ in range(n_jobs + 5):
            job = await store.acquire_job(name, {})
            if job is None:
                return
            taken.append(job.id)

    with trio.fail_after(30):
        async with trio.open_nursery() as n:
            for i in range(4):
                n.start_soon(daemon, f"d{i}")
    assert len(taken) == n_jobs
    assert len(set(taken)) == n_jobs


async def test_daemons(opened: Opened) -> None:
    store = opened.store
    d = await store.upsert_daemon("id1", "builtin-0", {"scope": "org"})
    d2 = await store.upsert_daemon("id1", "builtin-0", {"scope": "user"})
    assert d2.tags == {"scope": "user"}
    assert d2.created_at == d.created_at
    assert [x.id for x in await store.list_daemons()] == ["id1"]


async def test_pubsub_delivers_after_subscribe(opened: Opened) -> None:
    pubsub = opened.pubsub
    with trio.fail_after(10):
        async with pubsub.subscribe("jobs") as sub, pubsub.subscribe("other") as other:
            await pubsub.publish("jobs", "hello")
            await pubsub.publish("jobs", "world")
            assert await sub.__anext__() == "hello"
            assert await sub.__anext__() == "world"
            await pubsub.publish("other", "x")
            assert await other.__anext__() == "x"


async def test_store_opens_with_trio_asyncio_imported(tmp_path: object) -> None:
    # trio-asyncio (used elsewhere in burrow) patches asyncio.new_event_loop to
    # refuse trio threads; the store's loop must still start.
    import trio_asyncio  # noqa: F401

    o = await open_store(data_dir=str(tmp_path))
    try:
        assert await o.store.count_users() == 0
    finally:
        await o.aclose()


async def test_pubsub_stops_listening_when_the_last_subscriber_leaves(opened: Opened) -> None:
    pubsub = opened.pubsub
    listening = getattr(pubsub, "listening", None)
    with trio.fail_after(10):
        async with pubsub.subscribe("a") as one, pubsub.subscribe("a") as two:
            await pubsub.publish("a", "x")
            assert await one.__anext__() == "x"
            assert await two.__anext__() == "x"
            if listening is not None:
                assert pubsub.listening == 1  # type: ignore[attr-defined]
        if listening is not None:
            assert pubsub.listening == 0  # type: ignore[attr-defined]
        # and a new subscriber still receives
        async with pubsub.subscribe("a") as three:
            await pubsub.publish("a", "y")
            assert await three.__anext__() == "y"
