"""``kdkit bench detect``: the streaming detector end to end, on one core.

    kdkit bench detect --model student.pt2 --input capture.log --channel can0 [--repeats 5] [--json]
    kdkit bench detect --model student.pt2 --input capture.log --live [--seconds 10] [--json]

Replay (default): read -> windows -> graphs -> model -> alarms over the whole file, as
``kdkit detect --input`` runs it, after one untimed burn-in; messages/s (min/median/max over
the repeats), CPU seconds and messages per CPU second (the figure to read on a shared machine), and how the time splits between reading the file and detecting.
Live (``--live``): the file's frames are sent at their recorded pace (``can.MessageSync``, with
``preserve_timestamps=True``) on a python-can virtual bus from a thread, and a ``recv`` loop
feeds the detector frame by frame: per-window decision latency p50/p99 from ``recv`` returning
the window's last frame to the decision, and from the sender's ``send`` of that frame to the
decision (``send_to_decision_ms_*``: adds the time the frame waited in the bus's queue, e.g. while
the previous frame was still being decided).
"""
from __future__ import annotations

import math
import os
import statistics
import threading
import time
from pathlib import Path

import can
import numpy as np
import torch

from kdkit.data.readers import LOGGER_SUFFIXES, read_messages
from kdkit.stream.detector import Detector
from kdkit.stream.run import as_can_messages, listen_bus, replay_file
from kdkit.training.hardware import machine_info


def reader_name(path: str | Path) -> str:
    """Which kdkit reader :func:`kdkit.data.read_messages` uses for ``path``."""
    suffix = Path(Path(path).name.lower().removesuffix(".gz")).suffix
    if suffix in LOGGER_SUFFIXES:
        return f"kdkit.data.loggers ({suffix} logger format)"
    return "kdkit.data.readers (CSV, pyarrow)"


def _spread(values: list[float], digits: int = 4) -> dict:
    return {"min": round(min(values), digits), "median": round(statistics.median(values), digits),
            "max": round(max(values), digits)}


def bench_replay(model: str | Path, path: str | Path, channel: str | None = None, repeats: int = 5,
                 threads: int = 1, engine: str = "auto") -> dict:
    """Replay ``path`` through a detector ``repeats`` times (after one untimed burn-in). The
    replays are clones of one detector: a once-only warning (an unknown vehicle, re-stamped
    timestamps) is given once for the whole benchmark."""
    if repeats < 1:
        raise ValueError(f"--repeats must be >= 1, got {repeats}")
    _check_threads(threads)
    torch.set_num_threads(threads)
    base = Detector.load(model, channel=channel, engine=engine)  # as kdkit detect: its advice names the channel
    replay_file(base.clone(), path, channel=channel, count_channels=False)  # burn-in: allocator, kernels, page cache
    runs = []
    for _ in range(repeats):
        s = replay_file(base.clone(), path, channel=channel, count_channels=False).to_dict()
        runs.append(s)
    last = runs[-1]
    return {"benchmark": "detect replay", "model": str(model), "input": str(path), "channel": channel,
            "reader": reader_name(path), "window": last["window"], "stride": last["stride"],
            "messages": last["messages"], "windows": last["windows"], "alarms": last["alarms"], "repeats": repeats,
            "messages_per_s": _spread([r["messages_per_s"] for r in runs], 0),
            "messages_per_cpu_s": _spread([r["messages"] / max(r["cpu_seconds"], 1e-9) for r in runs], 0),
            "seconds": _spread([r["seconds"] for r in runs]), "cpu_seconds": _spread([r["cpu_seconds"] for r in runs]),
            "read_seconds": _spread([r["read_seconds"] for r in runs]),
            "detect_seconds": _spread([r["seconds"] - r["read_seconds"] for r in runs]),
            "detect_messages_per_s": _spread([r["messages"] / max(r["seconds"] - r["read_seconds"], 1e-9) for r in runs], 0),
            "threads": threads, "engine": base.batch_engine, "single_window_engine": base.engine,
            "machine": machine_info()}


def _check_threads(threads: int) -> None:
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ValueError(f"--threads must be >= 1, got {threads!r}")


def _send_to_decision(send_times: list[float], decided: list[tuple[int, float]]) -> dict:
    """p50/p99/max milliseconds from sending a window's last frame to its decision."""
    ms = [(t - send_times[last]) * 1e3 for last, t in decided if last < len(send_times)]
    ms = [v for v in ms if math.isfinite(v)]
    if not ms:
        return {"send_to_decision_ms_p50": None, "send_to_decision_ms_p99": None, "send_to_decision_ms_max": None}
    return {f"send_to_decision_ms_{k}": round(float(np.percentile(ms, q)), 4) for k, q in (("p50", 50), ("p99", 99),
                                                                                             ("max", 100))}


def bench_live(model: str | Path, path: str | Path, channel: str | None = None, seconds: float = 10.0,
               threads: int = 1, engine: str = "auto") -> dict:
    """Send the first ``seconds`` of ``path`` at its recorded pace on a virtual bus and detect
    live; per-window decision latency p50/p99."""
    if not (isinstance(seconds, (int, float)) and math.isfinite(seconds) and seconds > 0):
        raise ValueError(f"--seconds must be a finite number > 0, got {seconds!r}")
    _check_threads(threads)
    torch.set_num_threads(threads)
    det = Detector.load(model, engine=engine)
    # the frames come back from the virtual bus under its own channel name: the channel is only the advice's
    # (the "calibrate this car" command names it, as kdkit detect's does)
    det.vehicle.channel = channel
    msgs = read_messages(path, on_bad_rows="skip", channel=channel)
    n = int(np.searchsorted(msgs.timestamp, msgs.timestamp[0] + seconds, side="right"))
    msgs = msgs.slice(0, n)
    name = f"kdkit-bench-detect-{os.getpid()}-{time.monotonic_ns()}"
    rx = can.Bus(interface="virtual", channel=name)
    tx = can.Bus(interface="virtual", channel=name, preserve_timestamps=True)
    sent = threading.Event()
    frames = list(as_can_messages(msgs))  # made before the clock starts: the sender thread holds the GIL less
    send_times = [math.nan] * len(frames)
    decided: list[tuple[int, float]] = []  # (the window's last message, decision time)

    def send() -> None:
        try:
            for i, frame in enumerate(can.MessageSync(frames, timestamps=True, gap=0.0)):
                send_times[i] = time.perf_counter()  # before send: the frame cannot arrive earlier
                tx.send(frame)
        finally:
            sent.set()

    def on_decision(dec) -> None:
        decided.append((dec.first_message + dec.messages - 1, time.perf_counter()))

    sender = threading.Thread(target=send, name="kdkit-bench-sender", daemon=True)
    try:
        sender.start()
        summary = listen_bus(det, rx, source=f"virtual:{name}", max_messages=n, max_seconds=seconds + 30,
                             stall_seconds=5.0, on_decision=on_decision).to_dict()
    finally:
        sent.wait(timeout=seconds + 30)
        rx.shutdown()
        tx.shutdown()
    return {"benchmark": "detect live (virtual bus, recorded pace)", "model": str(model), "input": str(path),
            "channel": channel, "seconds": round(float(msgs.timestamp[-1] - msgs.timestamp[0]), 3) if n else 0.0,
            "messages": summary["messages"], "windows": summary["windows"], "alarms": summary["alarms"],
            "latency_ms_p50": summary["latency_ms_p50"], "latency_ms_p99": summary["latency_ms_p99"],
            "latency_ms_max": summary["latency_ms_max"], **_send_to_decision(send_times, decided),
            "cpu_ms_p50": summary["cpu_ms_p50"],
            "cpu_ms_p99": summary["cpu_ms_p99"], "cpu_seconds": summary["cpu_seconds"],
            "stopped_by": summary["stopped_by"], "threads": threads, "engine": det.engine, "machine": machine_info()}
