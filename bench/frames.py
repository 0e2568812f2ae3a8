"""Receive-side cost of framing: netproto's FrameDecoder against Twisted's Int32StringReceiver.

Feeds the same stream of frames, cut into socket-sized reads, to both, and
prints MB/s per frame size. Twisted's ``IntNStringReceiver.dataReceived``
re-concatenates its whole unprocessed buffer on every read, so a frame that
spans k reads costs O(k^2) copying; the decoder copies each byte into its
buffer once and out once.

    python -m bench.frames [--total-mib 256] [--read-kib 64]
"""

from __future__ import annotations

import argparse
import time

from twisted.protocols.basic import Int32StringReceiver

from netproto.codec import FrameDecoder, encodeFrame

SIZES = [1 << 10, 16 << 10, 64 << 10, 256 << 10, 1 << 20, 4 << 20, 16 << 20]


class Sink(Int32StringReceiver):
    MAX_LENGTH = 1 << 30

    def __init__(self) -> None:
        self.count = 0

    def stringReceived(self, string: bytes) -> None:
        self.count += 1


def reads(frameSize: int, totalBytes: int, readSize: int) -> tuple[list[bytes], int]:
    frame = encodeFrame(b"D", b"\0" * (frameSize - 1))
    n = max(1, totalBytes // len(frame))
    stream = frame * n
    return [stream[i : i + readSize] for i in range(0, len(stream), readSize)], n


def timeTwisted(chunks: list[bytes], expected: int) -> float:
    sink = Sink()
    t = time.perf_counter()
    for chunk in chunks:
        sink.dataReceived(chunk)
    elapsed = time.perf_counter() - t
    assert sink.count == expected, (sink.count, expected)
    return elapsed


def timeDecoder(chunks: list[bytes], expected: int) -> float:
    decoder = FrameDecoder(1 << 30)
    count = 0
    t = time.perf_counter()
    for chunk in chunks:
        decoder.feed(chunk)
        while decoder.next() is not None:
            count += 1
    elapsed = time.perf_counter() - t
    assert count == expected, (count, expected)
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--total-mib", type=int, default=256)
    parser.add_argument("--read-kib", type=int, default=64, help="bytes per simulated read")
    args = parser.parse_args()
    total, readSize = args.total_mib << 20, args.read_kib << 10
    print(f"{args.total_mib} MiB of frames in {args.read_kib} KiB reads")
    header = ("frame size", "Int32StringReceiver MB/s", "FrameDecoder MB/s", "ratio")
    print(f"{header[0]:>12} {header[1]:>26} {header[2]:>18} {header[3]:>7}")
    for size in SIZES:
        chunks, n = reads(size, total, readSize)
        volume = sum(map(len, chunks))
        tw = timeTwisted(chunks, n)
        ours = timeDecoder(chunks, n)
        print(
            f"{size:>12,} {volume / tw / 1e6:>26,.0f} {volume / ours / 1e6:>18,.0f}"
            f" {tw / ours:>6.1f}x"
        )


if __name__ == "__main__":
    main()
