"""Request tiles through shared-memory slabs: the bytes arrive intact, slabs are reused once
given back, and the byte budget sends what does not fit through the pipe instead."""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Iterator
from multiprocessing.connection import Connection

import numpy as np
import pytest

from inference_svc.engine.messages import SlabOffer, SlabRef
from inference_svc.engine.pixel_slabs import SlabReceiver, SlabSender, available

pytestmark = pytest.mark.skipif(not available(), reason="no memfd_create on this platform")

MIB = 1 << 20


@pytest.fixture
def pipe() -> Iterator[tuple[Connection, Connection]]:
    # The engine's own kind of connection: a duplex Pipe is a Unix socket pair, which carries
    # descriptors (here within one process, which SCM_RIGHTS allows as between two).
    parent, child = multiprocessing.get_context("spawn").Pipe()
    yield parent, child
    parent.close()
    child.close()


def tiles(count: int, seed: int, dtype: type = np.uint8) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (count, 3, 448, 448)).astype(dtype)


def deliver(child: Connection, receiver: SlabReceiver) -> None:
    """What the engine process's reader does with the slab announcements waiting for it."""
    while child.poll(0):
        offer = child.recv()
        assert isinstance(offer, SlabOffer)
        receiver.add(child, offer.number, offer.size)


def test_tiles_arrive_intact_and_a_given_back_slab_is_reused(
    pipe: tuple[Connection, Connection],
) -> None:
    parent, child = pipe
    sender = SlabSender(parent, 64 * MIB, os.getpid())
    receiver = SlabReceiver()
    first = tiles(2, seed=1)  # 1.2 MB
    ref = sender.put(first)
    assert isinstance(ref, SlabRef) and ref.shape == first.shape
    deliver(child, receiver)
    got_first = receiver.take(ref)
    assert np.array_equal(got_first, first) and got_first.dtype == np.uint8
    assert sender.slab_bytes == 2 * MIB  # slabs come in whole MiB

    # A slab is busy until given back: the next request gets one of its own.
    second = tiles(1, seed=2)  # 0.6 MB
    other = sender.put(second)
    assert other is not None and other.slab != ref.slab
    deliver(child, receiver)
    got_second = receiver.take(other)
    sender.release(ref.slab)
    sender.release(other.slab)

    # Given back, the smallest free slab that fits is reused, with no new announcement.
    third = tiles(1, seed=3)
    again = sender.put(third)
    assert again is not None and again.slab == other.slab
    assert not child.poll(0)
    assert np.array_equal(receiver.take(again), third)
    # What was taken before is the receiver's own copy: reusing the slab left it alone.
    assert np.array_equal(got_second, second)

    # Normalised float32 tiles (2.4 MB) fit neither free slab: a third one is made.
    fourth = tiles(1, seed=4).astype(np.float32) / 255
    last = sender.put(fourth)
    assert last is not None and last.slab == 2
    deliver(child, receiver)
    got = receiver.take(last)
    assert got.dtype == np.float32 and np.array_equal(got, fourth)
    assert (sender.shared, sender.pickled, sender.slab_bytes) == (4, 0, 6 * MIB)
    sender.close()
    receiver.close()


def test_the_budget_sends_the_rest_through_the_pipe(pipe: tuple[Connection, Connection]) -> None:
    parent, child = pipe
    sender = SlabSender(parent, 2 * MIB, os.getpid())
    receiver = SlabReceiver()
    held = sender.put(tiles(2, seed=4))
    assert held is not None
    assert sender.put(tiles(1, seed=5)) is None  # the only slab is busy, no room for another
    assert sender.put(tiles(4, seed=6)) is None  # larger than the whole budget
    assert (sender.shared, sender.pickled, sender.slab_bytes) == (1, 2, 2 * MIB)
    sender.release(held.slab)
    assert sender.put(tiles(1, seed=7)) is not None
    deliver(child, receiver)
    sender.close()
    receiver.close()


def test_slabs_must_arrive_in_order(pipe: tuple[Connection, Connection]) -> None:
    _, child = pipe
    with pytest.raises(RuntimeError, match="out of order"):
        SlabReceiver().add(child, 1, MIB)
