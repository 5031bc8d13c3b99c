"""Handshake and record layer, with plain bytes: tampered, truncated, replayed,
wrong keys -> typed errors; nothing else ever escapes."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as hs

from tunnel.channel import Channel
from tunnel.errors import (
    HandshakeAuthError,
    HandshakeReplayError,
    HandshakeTruncatedError,
    RecordError,
    UnknownPeerError,
)
from tunnel.handshake import (
    INITIATION_SIZE,
    RESPONSE_SIZE,
    consume_initiation,
    consume_response,
    create_initiation,
    create_response,
    generate_private_key,
    public_key,
    tai64n,
)
from tunnel.record import REPLAY_WINDOW, Keypair, Limits, ReplayWindow

I_PRIV = bytes(range(1, 33))
R_PRIV = bytes(range(101, 133))
I_PUB = public_key(I_PRIV)
R_PUB = public_key(R_PRIV)
TS = tai64n(1_700_000_000_000_000_000)
INST = b"instanc1"


def initiation(ts: bytes = TS, remote: bytes = R_PUB) -> tuple[bytes, object]:
    return create_initiation(I_PRIV, remote, local_index=7, timestamp=ts, instance=INST)


def consume(msg: bytes, last: bytes | None = None, allowed: bytes = I_PUB):  # type: ignore[no-untyped-def]
    return consume_initiation(
        R_PRIV, msg, authorize=lambda k: k == allowed, last_timestamp=lambda k: last
    )


def full_handshake() -> tuple[Keypair, Keypair]:
    msg, istate = initiation()
    rstate = consume(msg)
    resp, rkeys = create_response(rstate, local_index=9, instance=b"instanc2")
    ikeys = consume_response(istate, resp)  # type: ignore[arg-type]
    return Keypair(ikeys, 0.0), Keypair(rkeys, 0.0)


def test_handshake_agrees_on_keys_and_identities() -> None:
    msg, istate = initiation()
    assert len(msg) == INITIATION_SIZE
    rstate = consume(msg)
    assert rstate.peer_static == I_PUB
    assert rstate.peer_instance == INST
    resp, rkeys = create_response(rstate, local_index=9, instance=b"instanc2")
    assert len(resp) == RESPONSE_SIZE
    ikeys = consume_response(istate, resp)  # type: ignore[arg-type]
    assert ikeys.send_key == rkeys.recv_key
    assert ikeys.recv_key == rkeys.send_key
    assert ikeys.send_key != ikeys.recv_key
    assert ikeys.remote_index == 9
    assert rkeys.remote_index == 7
    assert ikeys.peer_instance == b"instanc2"
    assert ikeys.peer_static == R_PUB


def test_fresh_ephemerals_give_fresh_keys() -> None:
    a, _ = full_handshake()
    b, _ = full_handshake()
    assert a.keys.send_key != b.keys.send_key


@pytest.mark.parametrize("cut", range(INITIATION_SIZE))
def test_truncated_initiation(cut: int) -> None:
    msg, _ = initiation()
    with pytest.raises(HandshakeTruncatedError):
        consume(msg[:cut])


def test_initiation_with_trailing_bytes_is_rejected() -> None:
    msg, _ = initiation()
    with pytest.raises(HandshakeTruncatedError):
        consume(msg + b"\x00")


@pytest.mark.parametrize("pos", range(INITIATION_SIZE))
def test_tampered_initiation(pos: int) -> None:
    msg, _ = initiation()
    bad = bytearray(msg)
    bad[pos] ^= 0x01
    if pos < 4:
        with pytest.raises(HandshakeTruncatedError):
            consume(bytes(bad))
        return
    if pos < 8:  # the sender index is echoed, not authenticated by the responder
        consume(bytes(bad))
        return
    with pytest.raises(HandshakeAuthError):
        consume(bytes(bad))


def test_initiation_for_another_responder() -> None:
    msg, _ = initiation(remote=public_key(generate_private_key()))
    with pytest.raises(HandshakeAuthError):
        consume(msg)


def test_unauthorised_initiator_static_key() -> None:
    msg, _ = initiation()
    with pytest.raises(UnknownPeerError):
        consume(msg, allowed=public_key(generate_private_key()))


def test_replayed_initiation() -> None:
    msg, _ = initiation()
    state = consume(msg)
    with pytest.raises(HandshakeReplayError):
        consume(msg, last=state.timestamp)
    newer, _ = initiation(ts=tai64n(1_700_000_000_000_000_001))
    consume(newer, last=state.timestamp)


@pytest.mark.parametrize("pos", range(RESPONSE_SIZE))
def test_tampered_or_truncated_response(pos: int) -> None:
    msg, istate = initiation()
    resp, _ = create_response(consume(msg), local_index=9, instance=b"instanc2")
    with pytest.raises(HandshakeTruncatedError):
        consume_response(istate, resp[:pos])  # type: ignore[arg-type]
    bad = bytearray(resp)
    bad[pos] ^= 0x80
    if 4 <= pos < 8:  # responder's index: not secret, only echoed in records
        consume_response(istate, bytes(bad))  # type: ignore[arg-type]
        return
    with pytest.raises((HandshakeAuthError, HandshakeTruncatedError)):
        consume_response(istate, bytes(bad))  # type: ignore[arg-type]


def test_response_from_wrong_responder_key() -> None:
    msg, istate = create_initiation(
        I_PRIV, R_PUB, local_index=7, timestamp=TS, instance=INST
    )
    other = generate_private_key()
    # An attacker that knows the initiation but not R's private key cannot answer:
    # emulate by answering as a responder whose key the initiator did not expect.
    forged_state = consume_initiation(
        R_PRIV, msg, authorize=lambda k: True, last_timestamp=lambda k: None
    )
    forged_state.sym.ck = bytes(64)  # a different chaining key = a different DH result
    resp, _ = create_response(forged_state, local_index=9, instance=b"x" * 8)
    with pytest.raises(HandshakeAuthError):
        consume_response(istate, resp)
    assert other  # keep the linter quiet about the unused key


def test_record_roundtrip_tamper_and_replay() -> None:
    ikp, rkp = full_handshake()
    rec = ikp.seal(b"hello")
    assert rkp.open(rec) == b"hello"
    with pytest.raises(RecordError) as exc:
        rkp.open(rec)
    assert exc.value.reason == "record_replay"
    rec2 = ikp.seal(b"world")
    for pos in range(len(rec2)):
        if 4 <= pos < 8:
            continue  # receiver index: checked by the channel, not the keypair
        bad = bytearray(rec2)
        bad[pos] ^= 0x04
        with pytest.raises(RecordError):
            rkp.open(bytes(bad))
    assert rkp.open(rec2) == b"world"  # forgeries did not poison the window
    for cut in range(len(rec2)):
        with pytest.raises(RecordError):
            rkp.open(rec2[:cut])
    # a record sealed for the other direction does not open
    with pytest.raises(RecordError):
        ikp.open(ikp.seal(b"x"))


def test_records_out_of_order_within_window_and_too_old() -> None:
    ikp, rkp = full_handshake()
    recs = [ikp.seal(bytes([i % 256])) for i in range(REPLAY_WINDOW + 10)]
    assert rkp.open(recs[-1]) == bytes([(REPLAY_WINDOW + 9) % 256])
    assert rkp.open(recs[20]) == bytes([20])  # inside the window: fine
    with pytest.raises(RecordError):
        rkp.open(recs[5])  # fell out of the window


def test_counter_exhaustion_refuses_to_seal() -> None:
    ikp, _ = full_handshake()
    ikp.limits = Limits(reject_after_messages=2)
    ikp.seal(b"")
    ikp.seal(b"")
    from tunnel.errors import LimitError

    with pytest.raises(LimitError):
        ikp.seal(b"")


@given(hs.lists(hs.integers(min_value=0, max_value=5000), max_size=300))
def test_replay_window_matches_a_set_model(counters: list[int]) -> None:
    w = ReplayWindow()
    seen: set[int] = set()
    top = -1
    for c in counters:
        expect = c not in seen and c > top - REPLAY_WINDOW
        assert w.check(c) == expect
        if expect:
            w.update(c)
            seen.add(c)
            top = max(top, c)


def _channels() -> tuple[Channel, Channel]:
    a = Channel(I_PRIV, R_PUB, instance=b"A" * 8)
    b = Channel(R_PRIV, I_PUB, instance=b"B" * 8)
    return a, b


def _run_handshake(a: Channel, b: Channel, now: float = 0.0) -> None:
    a.tick(now)
    for _ in range(3):
        for m in a.take_outgoing():
            b.receive(m, now)
        for m in b.take_outgoing():
            a.receive(m, now)


def test_channel_handshake_rekey_and_counting() -> None:
    a, b = _channels()
    _run_handshake(a, b)
    assert a.can_seal(0)
    assert b.can_seal(0)
    rec = b.seal(b"x", 0)
    assert rec is not None
    assert a.receive(rec, 0).plaintext == b"x"
    assert a.receive(rec, 0).plaintext is None
    assert a.dropped["record_replay"] == 1
    old = a.current
    # after the rekey time the initiator starts a new handshake; old records still open
    a.tick(a.limits.rekey_after_time + 1)
    assert a.handshake_pending()
    late = b.seal(b"late", 1)
    _run_handshake(a, b, a.limits.rekey_after_time + 1)
    assert a.current is not old
    assert late is not None
    assert a.receive(late, 121).plaintext == b"late"


def test_channel_rejects_initiation_from_other_static_key() -> None:
    _, b = _channels()
    mallory = Channel(generate_private_key(), R_PUB, instance=b"M" * 8)
    mallory.tick(0)
    for m in mallory.take_outgoing():
        assert b.receive(m, 0).plaintext is None
    assert b.dropped["static_key_mismatch"] == 1
    assert b.take_outgoing() == []


def test_channel_rejects_replayed_initiation() -> None:
    a, b = _channels()
    a.tick(0)
    (init,) = a.take_outgoing()
    assert b.receive(init, 0).established
    b.take_outgoing()
    assert not b.receive(init, 0).established
    assert b.dropped["handshake_replay"] == 1


@settings(max_examples=300)
@given(hs.binary(max_size=200))
def test_channel_never_raises_on_garbage(data: bytes) -> None:
    a, b = _channels()
    _run_handshake(a, b)
    assert a.receive(data, 0).plaintext is None or data[:1] == b"\x04"
    for kind in (b"\x01", b"\x02", b"\x04"):
        a.receive(kind + data, 0)
