"""Sequence numbers: bands, the ledger, and the guarantee that no two probes share one."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule
from mtrd.engine.probe import ProbeRequest
from mtrd.engine.sequence import (
    Allocation,
    Band,
    Plan,
    SequenceLedger,
    SequenceSpace,
    fixed_udp_values,
)

SPACE = SequenceSpace(low=33434, high=65535)


@pytest.mark.parametrize(("version", "low"), [("0.93", 33000), ("0.95", 33000), ("0.96", 33434)])
def test_space_follows_the_version(version: str, low: int) -> None:
    """0.96 starts counting at 33434, older versions at 33000."""
    assert SequenceSpace.for_version(version).low == low


@given(st.integers(1, 16))
def test_bands_are_disjoint_and_inside_the_ring(count: int) -> None:
    """Bands never overlap, stay inside the ring and keep a guard at their end."""
    bands = SPACE.bands(count)
    assert len(bands) == count
    for band, following in itertools.pairwise(bands):
        assert band.stop < following.start
    assert bands[0].start == SPACE.low
    assert bands[-1].stop <= SPACE.high
    assert all(band.usable > 1000 for band in bands) or count > 8


def test_allocation_burns_up_to_the_band() -> None:
    """A fresh process below its band is moved up by burning."""
    ledger = SequenceLedger(SPACE)
    band = Band(start=40000, stop=45000)
    assert ledger.allocate(33000, band, ()) == Allocation(burns=7000, sequence=40000)


def test_allocation_skips_held_sequences() -> None:
    """A sequence some outstanding probe holds is burned, not reused."""
    ledger = SequenceLedger(SPACE)
    band = Band(start=40000, stop=45000)
    ledger.hold(40000, ())
    ledger.hold(40001, ())
    assert ledger.allocate(40000, band, ()) == Allocation(burns=2, sequence=40002)


def test_allocation_skips_fixed_udp_ports() -> None:
    """A sequence equal to an outstanding udp probe's fixed port is burned."""
    ledger = SequenceLedger(SPACE)
    band = Band(start=40000, stop=45000)
    ledger.hold(44000, (40000,))
    assert ledger.allocate(40000, band, ()) == Allocation(burns=1, sequence=40001)


def test_udp_probe_waits_while_its_port_is_a_held_sequence() -> None:
    """A udp probe whose fixed port is some probe's sequence waits until that one ends."""
    ledger = SequenceLedger(SPACE)
    band = Band(start=40000, stop=45000)
    ledger.hold(40000, ())
    assert ledger.allocate(40001, band, (40000,)) is Plan.WAIT
    ledger.release(40000, ())
    assert isinstance(ledger.allocate(40001, band, (40000,)), Allocation)


def test_allocation_stops_at_the_band_end() -> None:
    """A process at the end of its band is exhausted and must be retired."""
    ledger = SequenceLedger(SPACE)
    band = Band(start=40000, stop=40002)
    ledger.hold(40001, ())
    assert ledger.allocate(40001, band, ()) is Plan.EXHAUSTED


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"protocol": "icmp"}, ()),
        ({"protocol": "tcp", "port": 80}, ()),
        ({"protocol": "udp", "port": 33434, "local_port": 40000}, (33434, 40000)),
        ({"protocol": "udp", "port": 53}, (53,)),
        ({"protocol": "udp", "local_port": 40000}, (40000,)),
        ({"protocol": "udp"}, (0x1234,)),
    ],
)
def test_fixed_udp_values(fields: dict[str, object], expected: tuple[int, ...]) -> None:
    """The udp header values mtr-packet looks sequences up in, besides the sequence."""
    assert fixed_udp_values(ProbeRequest("203.0.113.7", **fields), 0x51234) == expected  # type: ignore[arg-type]


class LedgerMachine(RuleBasedStateMachine):
    """Several processes take and release sequences through one ledger, as the pool does.

    The invariant is the guarantee the pool rests on: no two outstanding probes,
    in any process, share a sequence, and no outstanding probe's sequence is
    another outstanding udp probe's fixed port.
    """

    def __init__(self) -> None:
        super().__init__()
        self.ledger = SequenceLedger(SPACE)
        self.bands = SPACE.bands(3)
        self.cursors = [SequenceSpace.for_version("0.95").low] * 3
        self.outstanding: list[tuple[int, tuple[int, ...]]] = []

    @rule(
        process=st.integers(0, 2),
        ports=st.sampled_from([(), (), (33434,), (33434, 40000), (50000,)]),
    )
    def send(self, process: int, ports: tuple[int, ...]) -> None:
        """A process is given the next free sequence, if any."""
        band = self.bands[process]
        result = self.ledger.allocate(self.cursors[process], band, ports)
        if isinstance(result, Allocation):
            assert band.start <= result.sequence < band.stop
            assert result.sequence == self.cursors[process] + result.burns
            self.ledger.hold(result.sequence, ports)
            self.cursors[process] = result.sequence + 1
            self.outstanding.append((result.sequence, ports))
        elif result is Plan.EXHAUSTED:
            self.cursors[process] = SequenceSpace.for_version("0.95").low  # a fresh process

    @precondition(lambda self: self.outstanding)
    @rule(data=st.data())
    def reply(self, data: st.DataObject) -> None:
        """Some outstanding probe ends."""
        index = data.draw(st.integers(0, len(self.outstanding) - 1))
        sequence, ports = self.outstanding.pop(index)
        self.ledger.release(sequence, ports)

    @invariant()
    def sequences_are_unique(self) -> None:
        """No two outstanding probes share a sequence or collide with a fixed udp port."""
        held = [sequence for sequence, _ in self.outstanding]
        assert len(held) == len(set(held))
        fixed = {port for _, ports in self.outstanding for port in ports}
        assert not fixed & set(held)
        assert self.ledger.outstanding == len(held)


LedgerMachine.TestCase.settings = settings(max_examples=60, stateful_step_count=80)
test_ledger_keeps_sequences_unique = LedgerMachine.TestCase
