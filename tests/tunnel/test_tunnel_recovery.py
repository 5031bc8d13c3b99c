"""Loss recovery and acknowledgement tracking on their own, with plain numbers for time."""

from __future__ import annotations

from tunnel import frames as fr
from tunnel.acks import AckTracker
from tunnel.config import Config
from tunnel.recovery import MAX_BACKOFF, LossRecovery, SentPacket


def sent(r: LossRecovery, pns: range, now: float = 0.0) -> dict[int, SentPacket]:
    out = {}
    for pn in pns:
        out[pn] = SentPacket(now, [(2, pn * 10, 10, False)])
        r.on_sent(pn, out[pn], now)
    return out


def ack(*ranges: tuple[int, int]) -> fr.Ack:
    return fr.Ack(tuple(sorted(ranges, reverse=True)))


def test_a_packet_three_below_an_acked_one_is_lost() -> None:
    r = LossRecovery(Config(), 0.0)
    pkts = sent(r, range(5))
    acked, lost = r.on_ack(ack((3, 4)), 0.01)
    assert acked == [pkts[3], pkts[4]]
    assert lost == [pkts[0], pkts[1]]  # 4-0 and 4-1 >= 3; 2 is still in flight
    assert list(r.sent) == [2]
    assert r.srtt == 0.01


def test_a_late_ack_for_a_lost_packet_still_counts() -> None:
    r = LossRecovery(Config(), 0.0)
    pkts = sent(r, range(5))
    r.on_ack(ack((4, 4)), 0.01)
    acked, lost = r.on_ack(ack((0, 4)), 0.02)
    assert pkts[0] in acked
    assert not lost


def test_the_rto_doubles_per_expiry_up_to_the_cap_and_progress_resets_it() -> None:
    cfg = Config(initial_rto=1.0, max_rto=4.0)
    r = LossRecovery(cfg, 0.0)
    sent(r, range(1))
    assert r.on_timer(0.5) == []
    now = 1.0
    assert len(r.on_timer(now)) == 1
    assert r.backoff == 2
    for _ in range(10):
        sent(r, range(1, 2), now)
        now += r.rto()
        r.on_timer(now)
        r.sent.clear()
    assert r.backoff <= MAX_BACKOFF
    assert r.rto() == cfg.max_rto
    pkts = sent(r, range(2, 3), now)
    r.on_ack(ack((2, 2)), now + 0.1)
    assert r.backoff == 1.0
    assert pkts[2] not in r.sent.values()


def test_a_path_change_loses_everything_without_backing_off() -> None:
    r = LossRecovery(Config(), 0.0)
    sent(r, range(3))
    assert len(r.path_changed(1.0)) == 3
    assert r.backoff == 1.0
    assert r.deadline() is None


def test_acks_are_ranges_and_only_eliciting_packets_make_one_due() -> None:
    a = AckTracker(max_ranges=32)
    a.on_packet(0, eliciting=False)
    assert not a.needed
    for pn in (1, 2, 5, 4, 9):
        a.on_packet(pn, eliciting=True)
    assert a.needed
    assert a.unacked == 5
    assert fr.parse(fr.encode_pn(0) + a.take_frame())[1] == [ack((0, 2), (4, 5), (9, 9))]
    assert not a.needed
    assert a.unacked == 0


def test_only_the_newest_ranges_are_kept() -> None:
    a = AckTracker(max_ranges=2)
    for pn in (0, 2, 4, 6):
        a.on_packet(pn, eliciting=True)
    assert a.ranges == [[4, 4], [6, 6]]
