"""Counting live destination workers from their heartbeats (in-process, with an injected clock)."""

import time

from relay.presence import Presence
from schemas.codec import encode, encode_one
from schemas.messages import Envelope, Kind


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def beat(name: str, dest: str, heartbeat_s: float | None = None, leaving: bool = False) -> bytes:
    payload = {"name": name, "kind": "worker", "dest": dest, "host": "h", "slots": 4, "running": 1, "version": "0"}
    if heartbeat_s is not None:
        payload |= {"heartbeat_s": heartbeat_s, "leaving": leaving}
    return encode_one(Envelope(Kind.REGISTER, "", payload, ts=time.time()))


def test_a_worker_counts_for_three_of_its_own_intervals_and_not_after_it_leaves() -> None:
    clock = Clock()
    presence = Presence(default_heartbeat_s=10.0, clock=clock)
    presence.take(beat("fast", "d", heartbeat_s=1.0))
    presence.take(beat("default", "d"))  # states no interval: the relay's default (10 s) applies
    presence.take(beat("other", "e", heartbeat_s=1.0))
    assert (presence.workers("d"), presence.workers("e"), presence.destinations()) == (2, 1, {"d", "e"})

    clock.now += 3.5  # past 3 intervals of the fast one, well within the default's
    assert presence.workers("d") == 1
    presence.take(beat("fast", "d", heartbeat_s=1.0))  # it comes back
    assert presence.workers("d") == 2

    presence.take(beat("fast", "d", heartbeat_s=1.0, leaving=True))
    assert presence.workers("d") == 1
    clock.now += 31
    assert presence.workers("d") == 0
    assert "d" in presence.destinations()  # still listed, with no workers: a pool scaled to zero


def test_anything_but_a_workers_register_is_ignored() -> None:
    presence = Presence(default_heartbeat_s=10.0, clock=Clock())
    agent = encode_one(Envelope(Kind.REGISTER, "", {"name": "a", "kind": "agent", "dest": "d"}))
    bad_dest = beat("w", "no spaces allowed")
    not_register = encode_one(Envelope(Kind.HEARTBEAT, "", {"name": "w", "kind": "worker", "dest": "d"}))
    for body in [b"", b"\xc1", agent, bad_dest, not_register, encode([Envelope(Kind.REGISTER, "", {"kind": 1})])]:
        presence.take(body)
    assert presence.destinations() == set()
