"""Hand-over benchmark: one request's tiles from the server process to the engine process,
pickled through the engine pipe (the way before ``PIXEL_BUFFER_MB``) against through a
shared-memory slab (``engine.pixel_slabs``, the default), in the same run.

    .venv/bin/python -m bench.handover
    .venv/bin/python -m bench.handover --tiles 8 --messages 50 --rounds 3

A spawned child reads the messages as the engine process's reader does (the pickled tiles
from the pipe; or the slab reference, a private copy of the tiles and the slab given back)
and reports its CPU time. The sender's CPU time is its thread's. Rounds alternate the two
ways, so the host's drift falls on both; the figures are medians over rounds.
"""

from __future__ import annotations

import multiprocessing
import statistics
import time
from collections.abc import Sequence
from multiprocessing.connection import Connection
from typing import Any

import numpy as np

from bench.common import argument_parser, fmt, machine, ratio, table
from inference_svc.engine import pixel_slabs
from inference_svc.engine.messages import SlabOffer


def _reader(conn: Connection) -> None:
    """The engine process's side: read until None, then answer with this process's CPU."""
    slabs = pixel_slabs.SlabReceiver()
    started = time.process_time()
    while True:
        message = conn.recv()
        if message is None:
            break
        if isinstance(message, SlabOffer):
            slabs.add(conn, message.number, message.size)
            continue
        if message[0] == "mark":  # a round's start: report the CPU spent before it
            conn.send(time.process_time() - started)
            started = time.process_time()
            continue
        _, pixels, ref = message
        if ref is not None:
            pixels = slabs.take(ref)
            conn.send(("released", ref.slab))
        checksum = int(pixels[:, :, ::97, ::89].sum())
        conn.send(("got", checksum))
    conn.send(time.process_time() - started)
    slabs.close()


def _round(
    conn: Connection, sender: pixel_slabs.SlabSender | None, tiles: np.ndarray, messages: int
) -> tuple[float, float]:
    """(sender ms, reader ms) per message for ``messages`` hand-overs one way."""
    conn.send(("mark",))
    conn.recv()  # the reader's CPU before this round
    spent = 0.0
    for _ in range(messages):
        began = time.thread_time()
        ref = sender.put(tiles) if sender is not None else None
        conn.send(("tiles", tiles if ref is None else None, ref))
        spent += time.thread_time() - began
        reply: Any = conn.recv()
        if reply[0] == "released":
            assert sender is not None
            sender.release(reply[1])
            reply = conn.recv()
        if reply != ("got", int(tiles[:, :, ::97, ::89].sum())):
            raise RuntimeError(f"the tiles arrived changed: {reply}")
    conn.send(("mark",))
    reader = float(conn.recv())
    return spent / messages * 1000, reader / messages * 1000


def run(tiles_count: int, messages: int, rounds: int) -> dict[str, tuple[float, float]]:
    rng = np.random.default_rng(0)
    tiles = rng.integers(0, 256, (tiles_count, 3, 448, 448), dtype=np.uint8)
    context = multiprocessing.get_context("spawn")
    parent, child = context.Pipe()
    process = context.Process(target=_reader, args=(child,), daemon=True)
    process.start()
    child.close()
    assert process.pid is not None
    sender = pixel_slabs.SlabSender(parent, 256 << 20, process.pid)
    runs: dict[str, list[tuple[float, float]]] = {"pickled": [], "slab": []}
    try:
        _round(parent, sender, tiles, 2)  # the slab is made and announced outside the timing
        _round(parent, None, tiles, 2)
        for _ in range(rounds):
            runs["pickled"].append(_round(parent, None, tiles, messages))
            runs["slab"].append(_round(parent, sender, tiles, messages))
        parent.send(None)
        parent.recv()
    finally:
        process.join(10)
        sender.close()
        parent.close()
    return {
        way: (statistics.median(s for s, _ in got), statistics.median(r for _, r in got))
        for way, got in runs.items()
    }


def main(argv: Sequence[str] | None = None) -> dict[str, tuple[float, float]]:
    parser = argument_parser("handover", __doc__)
    parser.add_argument("--tiles", type=int, default=8, help="448 px uint8 tiles per request")
    parser.add_argument("--messages", type=int, default=50, help="hand-overs per round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of each way, alternated")
    args = parser.parse_args(argv)
    if not pixel_slabs.available():
        raise SystemExit("no memfd_create on this platform: the slabs are Linux-only")
    print(f"machine: {machine()}")
    mb = args.tiles * 3 * 448 * 448 / 1e6
    print(
        f"request: {args.tiles} tiles of uint8 448x448 ({mb:.1f} MB), "
        f"{args.messages} hand-overs x {args.rounds} rounds each way"
    )
    figures = run(args.tiles, args.messages, args.rounds)
    rows = []
    for way, (sent, read) in figures.items():
        rows.append([way, fmt(sent, 2), fmt(read, 2), fmt(sent + read, 2)])
    print(table(["way", "sender CPU ms", "reader CPU ms", "total CPU ms"], rows))
    pickled, slab = figures["pickled"], figures["slab"]
    print(
        f"RATIOS pickled/slab CPU per hand-over: sender {ratio(pickled[0], slab[0]):.1f}x, "
        f"reader {ratio(pickled[1], slab[1]):.1f}x, "
        f"total {ratio(sum(pickled), sum(slab)):.1f}x"
    )
    return figures


if __name__ == "__main__":
    main()
