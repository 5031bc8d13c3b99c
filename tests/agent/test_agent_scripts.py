"""Startup/shutdown script runner: the sans-IO line splitter and real scripts."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st

from agent.lifecycle import Lifecycle, State, shutdown_outcome, startup_outcome
from agent.scripts import LineSplitter, LogLine, OutputLimits, ScriptResult, run_script
from tests.agent.agent_procs import alive

# ---------------------------------------------------------------- LineSplitter

SAMPLE = b"first line\nsecond\r\n\nutf8 \xc3\xa9\nno newline at end"
SAMPLE_LINES = ["first line", "second", "", "utf8 \u00e9", "no newline at end"]


def split_all(chunks: Sequence[bytes], max_line: int = 1000, max_total: int = 10_000) -> list[str]:
    splitter = LineSplitter(max_line, max_total)
    out: list[str] = []
    for chunk in chunks:
        out += splitter.feed(chunk)
    return out + splitter.finish()


def test_splitter_whole() -> None:
    assert split_all([SAMPLE]) == SAMPLE_LINES


def test_splitter_split_at_every_offset() -> None:
    for i in range(len(SAMPLE) + 1):
        assert split_all([SAMPLE[:i], SAMPLE[i:]]) == SAMPLE_LINES, i


def test_splitter_byte_by_byte() -> None:
    assert split_all([SAMPLE[i : i + 1] for i in range(len(SAMPLE))]) == SAMPLE_LINES


def test_splitter_cuts_long_lines() -> None:
    assert split_all([b"abcdefghij\n"], max_line=4) == ["abcd", "efgh", "ij"]
    assert split_all([b"abcd\n"], max_line=4) == ["abcd"]


def test_splitter_truncates_with_visible_markers() -> None:
    splitter = LineSplitter(100, 11)
    out = splitter.feed(b"12345\n1234\nxyz\nmore\n")
    out += splitter.finish()
    assert out[:2] == ["12345", "1234"]
    assert out[2] == "[burrow] output over 11 bytes: the rest is dropped"
    assert out[3] == "[burrow] 9 bytes of output dropped (limit 11 bytes)"
    assert len(out) == 4
    assert splitter.truncated
    assert splitter.kept_bytes + splitter.dropped_bytes == 20


@given(st.lists(st.binary(max_size=50), max_size=20))
def test_splitter_loses_nothing_under_the_limit(chunks: list[bytes]) -> None:
    data = b"".join(chunks)
    lines = split_all(chunks, max_line=7, max_total=10_000)
    splitter = LineSplitter(7, 10_000)
    splitter.feed(data)
    splitter.finish()
    assert splitter.kept_bytes == len(data)
    assert not splitter.truncated
    assert all(len(line.encode("utf-8", "replace")) <= 7 * 3 for line in lines)
    assert lines == split_all([data], max_line=7, max_total=10_000)


def test_splitter_rejects_bad_limits() -> None:
    with pytest.raises(ValueError, match="positive"):
        LineSplitter(0, 10)


# ---------------------------------------------------------------- run_script


class Collector:
    def __init__(self, delay: float = 0.0) -> None:
        self.batches: list[list[LogLine]] = []
        self.delay = delay

    async def __call__(self, lines: Sequence[LogLine]) -> None:
        self.batches.append(list(lines))
        if self.delay:
            await trio.sleep(self.delay)

    @property
    def lines(self) -> list[str]:
        return [line.text for batch in self.batches for line in batch]


async def run(
    script: str, tmp_path: Path, collector: Collector, timeout: float | None = 20, **kw: object
) -> ScriptResult:
    with trio.fail_after(30):
        return await run_script(
            script,
            cwd=tmp_path,
            env={"BURROW_TEST_VAR": "manifest-value"},
            timeout=timeout,
            on_output=collector,
            **kw,  # type: ignore[arg-type]
        )


async def test_script_success_runs_in_cwd_with_env(tmp_path: Path) -> None:
    out = Collector()
    result = await run('pwd; echo "$BURROW_TEST_VAR"; echo to-stderr >&2', tmp_path, out)
    assert result.exit_code == 0
    assert not result.timed_out
    assert out.lines == [str(tmp_path), "manifest-value", "to-stderr"]
    assert result.duration >= 0
    assert startup_outcome(result.exit_code, result.timed_out) is State.READY


async def test_failing_script_is_start_error(tmp_path: Path) -> None:
    out = Collector()
    result = await run("echo about to fail; exit 3", tmp_path, out)
    assert result.exit_code == 3
    assert out.lines == ["about to fail"]
    life = Lifecycle(at=1.0)
    life.advance(State.STARTING, at=2.0)
    life.advance(startup_outcome(result.exit_code, result.timed_out), at=3.0)
    assert life.state is State.START_ERROR


async def test_hanging_script_is_start_timeout_and_its_group_is_killed(tmp_path: Path) -> None:
    out = Collector()
    pidfile = tmp_path / "bg.pid"
    script = f"sleep 1000 & echo $! > {pidfile}; echo started; wait"
    result = await run(script, tmp_path, out, timeout=0.5, kill_grace=0.5)
    assert result.timed_out
    assert result.exit_code is not None
    assert result.exit_code < 0
    assert out.lines[0] == "started"
    assert startup_outcome(result.exit_code, result.timed_out) is State.START_TIMEOUT
    assert shutdown_outcome(result.exit_code, result.timed_out) is State.SHUTDOWN_TIMEOUT
    bg = int(pidfile.read_text())
    with trio.fail_after(5):
        while alive(bg):  # the background child died with its group
            await trio.sleep(0.02)


async def test_large_output_truncated_with_marker_and_batches_bounded(tmp_path: Path) -> None:
    out = Collector()
    limits = OutputLimits(batch_lines=50, batch_bytes=4096, max_total_bytes=100_000)
    # 5 MB of output: far over the limit; the script must still finish (drained).
    result = await run("yes 0123456789abcdef | head -c 5000000; exit 0", tmp_path, out,
                       limits=limits)
    assert result.exit_code == 0
    assert result.truncated
    assert result.output_bytes == 5_000_000
    lines = out.lines
    assert "[burrow] output over 100000 bytes: the rest is dropped" in lines
    assert lines[-1].startswith("[burrow] ")
    assert "bytes of output dropped" in lines[-1]
    kept = [line for line in lines if not line.startswith("[burrow]")]
    assert all(line == "0123456789abcdef" for line in kept)
    assert sum(len(line) + 1 for line in kept) <= 100_000
    for batch in out.batches:
        assert len(batch) <= 50
        assert sum(len(line.text) for line in batch) < 4096 + 16 * 1024


async def test_slow_consumer_gets_every_line_in_order(tmp_path: Path) -> None:
    out = Collector(delay=0.01)
    limits = OutputLimits(batch_lines=10)
    result = await run("i=0; while [ $i -lt 300 ]; do echo line$i; i=$((i+1)); done", tmp_path,
                       out, limits=limits)
    assert result.exit_code == 0
    assert out.lines == [f"line{i}" for i in range(300)]
    assert max(len(b) for b in out.batches) <= 10


async def test_output_flows_before_the_script_ends(tmp_path: Path) -> None:
    seen_early = trio.Event()

    async def on_output(lines: Sequence[LogLine]) -> None:
        if any(line.text == "early" for line in lines):
            seen_early.set()

    async def release_when_seen() -> None:
        with trio.fail_after(10):
            await seen_early.wait()
        (tmp_path / "go").touch()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(release_when_seen)
        with trio.fail_after(20):
            result = await run_script(
                f"echo early; while [ ! -e {tmp_path}/go ]; do sleep 0.02; done",
                cwd=tmp_path, env={}, timeout=15, on_output=on_output,
                limits=OutputLimits(flush_interval=0.05),
            )
    assert result.exit_code == 0


async def test_missing_cwd_is_a_start_error_with_a_reason(tmp_path: Path) -> None:
    out = Collector()
    result = await run("true", tmp_path / "missing", out)
    assert result.exit_code is None
    assert startup_outcome(result.exit_code, result.timed_out) is State.START_ERROR
    assert out.lines[0].startswith("[burrow] cannot start script:")


async def test_callback_error_kills_the_script(tmp_path: Path) -> None:
    pidfile = tmp_path / "pid"

    async def broken(lines: Sequence[LogLine]) -> None:
        raise ConnectionError("coderd went away")

    with pytest.raises(ConnectionError), trio.fail_after(20):
        await run_script(
            f"echo $$ > {pidfile}; echo hi; sleep 1000", cwd=tmp_path, env={},
            timeout=None, on_output=broken,
        )
    assert not alive(int(pidfile.read_text()))
