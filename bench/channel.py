"""The host <-> rank 0 channel's cost for the largest thing it carries: decoded frames.

    python bench/channel.py            # CPU only; writes bench/results/<date>-<cpu>-channel.{json,md}

81 frames of 480x832 in fp16 (194 MB, what the Wan VAE Decode node returns for 480x832x81) sent
by accel.parallel.channel, the receive timed until the tensor is whole (median of 3): through a
/dev/shm file (what the channel does for large tensors where /dev/shm has room), as raw bytes over
loopback TCP (its fallback), and serialised with safetensors through the same kind of connection
(what the channel did before: save, send, receive, load).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from safetensors.torch import load as load_tensors  # noqa: E402
from safetensors.torch import save as save_tensors  # noqa: E402

from accel import shared_memory  # noqa: E402
from accel.parallel import channel  # noqa: E402
from accel.parallel.channel import Message, connect, listen, receive, send  # noqa: E402
from bench.common import device_name, markdown_table, write_results  # noqa: E402

FRAMES = (81, 480, 832, 3)


def timed_receive(send_fn, receive_fn) -> float:
    """Seconds from the start of sending until the receiver holds the tensor."""
    listener, key = listen()
    done: dict = {}

    def serve() -> None:
        conn = listener.accept()
        receive_fn(conn)
        done["at"] = time.perf_counter()

    thread = threading.Thread(target=serve)
    thread.start()
    conn = connect(listener.address, key)
    began = time.perf_counter()
    send_fn(conn)
    thread.join()
    conn.close()
    listener.close()
    return done["at"] - began


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    frames = torch.rand(FRAMES, generator=torch.Generator().manual_seed(0)).half()
    def socket_only(conn) -> None:
        threshold, channel.SHARED_MIN_BYTES = channel.SHARED_MIN_BYTES, frames.nbytes + 1
        try:
            send(conn, Message("frames", {}, {"frames": frames}))
        finally:
            channel.SHARED_MIN_BYTES = threshold

    ways = {}
    if shared_memory.shared_room(frames.nbytes):
        ways["channel, through a /dev/shm file"] = (lambda conn: send(conn, Message("frames", {}, {"frames": frames})),
                                                    receive)
    ways.update({
        "channel, raw bytes over the socket": (socket_only, receive),
        "safetensors serialised (the channel before)": (
            lambda conn: conn.send_bytes(save_tensors({"frames": frames})),
            lambda conn: load_tensors(conn.recv_bytes())),
    })
    seconds = {name: statistics.median(timed_receive(*fns) for _ in range(args.repeats)) for name, fns in ways.items()}
    megabytes = frames.numel() * frames.element_size() / 1e6
    rows = [[name, value, megabytes / 1e3 / value] for name, value in seconds.items()]
    table = (f"# Channel: {megabytes:.0f} MB of fp16 frames {list(FRAMES)}, host <-> rank 0, "
             f"{device_name()}, median of {args.repeats}\n\n"
             + markdown_table(["way", "s until received", "GB/s"], rows))
    cpu = device_name().replace(" ", "-").replace("(", "").replace(")", "")
    path = write_results(f"{cpu}-channel", {"frames": list(FRAMES), "megabytes": megabytes, "seconds": seconds,
                                            "torch": torch.__version__}, table)
    print(table)
    print(f"wrote {path}.json / .md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
