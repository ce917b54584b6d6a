"""The detection loops ``kdkit detect``, the gateway notebook and ``kdkit bench detect`` share.

    summary = replay_file(det, "capture.log", channel="can0", on_decision=print)   # as fast as it goes
    summary = replay_file(det, "capture.log", realtime=True)                       # at the recorded pace
    with open_bus("socketcan:can0") as bus:
        summary = listen_bus(det, bus, on_decision=print, max_seconds=60)
    print(summary.format())

A replay reads the file with :func:`kdkit.data.read_messages` (every kdkit format; bad rows
skipped and counted; a file of 64 MiB or more in chunks of messages with
:func:`kdkit.data.iter_messages`, so that a long capture replays in bounded memory and its first
decisions come before the whole file is read) and feeds it to
:meth:`~kdkit.stream.detector.Detector.feed_many` in blocks, or, with ``realtime``, frame by frame
at the recorded pace. A live bus is read with a
``bus.recv`` loop: a stall (no frame for ``stall_seconds``) is logged and counted and the loop
goes on; ``can.CanError``/``OSError`` from ``recv`` (a lost connection) ends the run with the
error in its summary; Ctrl-C ends either loop with its summary.
"""
from __future__ import annotations

import errno
import logging
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import can
import numpy as np

from kdkit.data.columns import iter_mapped, training_layout
from kdkit.data.graphs import expect_messages
from kdkit.data.loggers import ALL_CHANNELS, carries_labels, channel_counts, read_channel
from kdkit.data.prep import expected_messages
from kdkit.data.readers import (
    CHUNK_ROWS,
    EXTENDED_ID_FLAG,
    LOGGER_SUFFIXES,
    Messages,
    iter_messages,
    read_messages,
    truncation,
)
from kdkit.stream.detector import BLOCK_MESSAGES, Decision, Detector
from kdkit.training.checkpoint import describe_calibration

STREAM_BYTES = 64 << 20  # files from this size on are replayed in chunks (bounded memory); smaller ones read whole
REPLAY_CHUNK_ROWS = CHUNK_ROWS  # messages per chunk of a streamed replay

log = logging.getLogger("kdkit.stream")


class BusError(RuntimeError):
    """A bus that cannot be opened (unknown interface, missing device, bad channel)."""


class RunSummary:
    """What a detection run did: counts, rates, decision latency, why it stopped.

    ``decisions`` keeps every decision when the run was asked to (``keep=True``)."""

    def __init__(self, detector: Detector, source: str, mode: str, keep: bool = False):
        self.detector, self.source, self.mode = detector, source, mode
        self.latencies: list[float] = []
        self.cpu_latencies: list[float] = []
        self.decisions: list[Decision] | None = [] if keep else None
        self.stalls = 0
        self.stopped_by = "end of input"
        self.error: str | None = None
        self.skipped_rows = 0
        self.channel: str | None = None  # the channel a replay of a logger file read (others left out)
        self.other_channels_note: str | None = None  # why a replay's other channels were not counted
        self.truncated: str | None = None  # a cut file (.gz, .blf): what was lost (counted as skipped rows)
        self.read_seconds = 0.0
        # labelled input (a labelled recording, a .labels.csv sidecar): [attack windows detected, missed, false
        # alarms, normal windows without alarm], by the model's label rule (attack share > label_threshold)
        self.confusion = [0, 0, 0, 0]
        self.labelled = 0
        self._t0, self._c0 = time.perf_counter(), time.process_time()
        self.seconds = self.cpu_seconds = 0.0

    def add(self, decision: Decision) -> None:
        if decision.attack_share is not None:
            self.labelled += 1
            attack = decision.attack_share > self.detector.label_threshold
            self.confusion[(0 if decision.is_attack else 1) if attack else (2 if decision.is_attack else 3)] += 1
        if decision.latency_s is not None:
            self.latencies.append(decision.latency_s)
        if decision.cpu_s is not None:
            self.cpu_latencies.append(decision.cpu_s)
        if self.decisions is not None:
            self.decisions.append(decision)

    def finish(self) -> RunSummary:
        self.detector.end()  # frames still held behind the last accepted one: no restart came, dropped
        self.seconds = time.perf_counter() - self._t0
        self.cpu_seconds = time.process_time() - self._c0
        return self

    def to_dict(self) -> dict:
        """The summary as JSON-ready values (latencies in ms; None where nothing was decided)."""
        d = self.detector
        def pct(values: list[float], q: float) -> float | None:
            return round(float(np.percentile(np.asarray(values) * 1e3, q)), 4) if values else None

        # what decided this run's windows: a fast replay's blocks run the batch engine, every other
        # run decides a window at a time (the printed line says the same word)
        engine = d.batch_engine if self.mode == "replay" else d.engine
        others = dict(sorted(d.other_channels.items(), key=lambda kv: (-kv[1], kv[0])))
        return {"source": self.source, "mode": self.mode, "model": d.name, "window": d.window, "stride": d.stride,
                # what latency_ms_* time: a fast replay's blocks of windows, every other run's single windows
                "latency_of": "block" if self.mode == "replay" else "window",
                "threshold": d.threshold, "engine": engine, "single_window_engine": d.engine,
                "batch_engine": d.batch_engine, "frames": d.frames, "messages": d.messages, "windows": d.windows,
                "alarms": d.alarms, "alarm_rate": round(d.alarms / d.windows, 6) if d.windows else None,
                "dropped": dict(d.dropped), "timeline_restarts": d.timeline_restarts,
                "channel": self.channel or d.channel, "other_channels": others,
                "other_channel_frames": None if self.other_channels_note else sum(others.values()),
                "skipped_rows": self.skipped_rows, "truncated": self.truncated, "stalls": self.stalls,
                # messages in no decided window: an open window left at a restart or a stall, and at the end
                "undecided_messages": d.undecided + d.open_messages,
                "between_windows": d.between_windows,  # passed over by a stride longer than the window
                "restamped": d.restamped, "unknown_vehicle": d.unknown_vehicle,
                "calibrated_on": describe_calibration(d.calibration) if d.calibration else None,
                "calibration_kind": None if not d.calibration else (
                    "adapted" if d.calibration.get("kind") == "adapt" else "threshold"),
                "seconds": round(self.seconds, 4), "cpu_seconds": round(self.cpu_seconds, 4),
                "read_seconds": round(self.read_seconds, 4),
                "messages_per_s": round(d.messages / self.seconds) if self.seconds > 0 else None,
                "latency_ms_p50": pct(self.latencies, 50), "latency_ms_p99": pct(self.latencies, 99),
                "latency_ms_max": pct(self.latencies, 100), "cpu_ms_p50": pct(self.cpu_latencies, 50),
                "cpu_ms_p99": pct(self.cpu_latencies, 99),
                "labels": self.labels(), "stopped_by": self.stopped_by, "error": self.error}

    def labels(self) -> dict | None:
        """How the alarms met the input's labels (None: unlabelled input): attack windows detected and
        missed, false alarms among the normal windows, recall, precision and the false-positive rate."""
        if not self.labelled:
            return None
        hit, missed, false, quiet = self.confusion
        ratio = lambda a, b: round(a / b, 6) if b else None  # noqa: E731
        return {"windows": self.labelled, "attack_windows": hit + missed, "detected": hit, "missed": missed,
                "false_alarms": false, "normal_windows": false + quiet, "recall": ratio(hit, hit + missed),
                "precision": ratio(hit, hit + false), "false_positive_rate": ratio(false, false + quiet)}

    def format(self) -> str:
        """A few human-readable lines."""
        s = self.to_dict()
        rate = f"{s['alarm_rate']:.2%}" if s["alarm_rate"] is not None else "-"
        # a fast replay decides up to BLOCK_MESSAGES messages' windows at once: its latency is a block's
        what = "latency per block of windows" if s["mode"] == "replay" else "decision latency"
        lat = (f"{what} p50 {s['latency_ms_p50']:.3f} ms, p99 {s['latency_ms_p99']:.3f} ms (CPU p50 "
               f"{s['cpu_ms_p50']:.3f} ms, p99 {s['cpu_ms_p99']:.3f} ms)" if s["latency_ms_p50"] is not None
               else "no decision")
        dropped = ", ".join(f"{k} {v}" for k, v in sorted(s["dropped"].items())) or "none"
        lines = [(f"{s['mode']} of {s['source']} with {s['model']} (window {s['window']}, stride {s['stride']}, "
                  f"threshold {s['threshold']:g}, engine {s['engine']}): stopped by {s['stopped_by']}"),
                 (f"  {s['windows']:,} windows, {s['alarms']:,} alarms (rate {rate}); {s['messages']:,} messages in "
                  f"{s['seconds']:.3f} s ({s['messages_per_s'] or 0:,} messages/s"
                  + (", one run: kdkit bench detect repeats it after a burn-in" if s["mode"] == "replay" else "")
                  + f", {s['cpu_seconds']:.3f} CPU s); {lat}"),
                 f"  dropped frames: {dropped}; skipped rows: {s['skipped_rows']}"
                 + (f" (the file is cut: {s['truncated']})" if s["truncated"] else "") + f"; stalls: {s['stalls']}"
                 + ("; timestamps looked re-stamped (see the warning)" if s["restamped"] else "")
                 + (f"; time went back and the windows restarted {s['timeline_restarts']} time(s) (see the warning)"
                    if s["timeline_restarts"] else ""),
                 f"  messages in no decided window: {s['undecided_messages']:,} (an open window at a restart, a "
                 f"stall or the end: a window is decided when its {s['window']}th message arrives)"
                 + (f"; {s['between_windows']:,} more between windows (the stride {s['stride']} passes over "
                    f"{s['stride'] - s['window']} of every {s['stride']} messages)" if s["between_windows"] else "")]
        if s["labels"] is not None:
            lab = s["labels"]
            pct = lambda v: "-" if v is None else f"{v:.2%}"  # noqa: E731
            lines.append(f"  labels: {lab['attack_windows']:,} attack windows, {lab['detected']:,} detected (recall "
                         f"{pct(lab['recall'])}), {lab['missed']:,} missed; {lab['false_alarms']:,} false alarms in "
                         f"{lab['normal_windows']:,} normal windows (rate {pct(lab['false_positive_rate'])})")
        if s["channel"] is not None:
            if s["other_channel_frames"] is None:
                lines.append(f"  frames of channels other than {s['channel']}: not counted ({self.other_channels_note})")
            elif s["other_channel_frames"]:
                per = ", ".join(f"{k} {v:,}" for k, v in s["other_channels"].items())
                lines.append(f"  left out as other channels than {s['channel']}: {s['other_channel_frames']:,} frames "
                             f"({per}); not dropped as bad")
        if s["unknown_vehicle"] and s["calibrated_on"]:
            what = "it was adapted to" if s["calibration_kind"] == "adapted" else "its threshold was calibrated on"
            lines.append("  most IDs on the bus are unknown to the model's training vocabulary (see the warning); "
                         f"{what} {s['calibrated_on']}")
        elif s["unknown_vehicle"]:
            lines.append("  the bus does not look like a vehicle the model was trained on (most IDs unknown to it; see "
                         "the warning): calibrate it on a clean capture of this car (kdkit calibrate)")
        elif s["unknown_vehicle"] is None and s["windows"]:  # the verdict needs its windows: say it was not made
            need = self.detector.vehicle.needed
            lines.append(f"  vehicle check: not judged ({s['windows']:,} of the {need} windows it needs); whether the "
                         "model knows this car is unknown")
        if s["error"]:
            lines.append(f"  error: {s['error']}")
        return "\n".join(lines)


class Terminated(KeyboardInterrupt):
    """Raised by ``kdkit detect``'s SIGTERM handler (a service manager, ``timeout``, ``docker stop``, a
    SLURM job's end): the run stops as on Ctrl-C, with its summary."""


class OutputFailed(KeyboardInterrupt):
    """Raised by an ``on_decision`` whose output takes no more (a full disk, a device error): the run
    stops with its summary, which names the failure as its error."""


def stopped_by(stop: KeyboardInterrupt) -> str:
    """The summary's ``stopped_by`` for an interruption."""
    if isinstance(stop, OutputFailed):
        return "the output failed"
    return "terminated (SIGTERM)" if isinstance(stop, Terminated) else "interrupted (Ctrl-C)"


def _stopped(summary: RunSummary, stop: KeyboardInterrupt) -> None:
    summary.stopped_by = stopped_by(stop)
    if isinstance(stop, OutputFailed):
        summary.error = str(stop)


def channel_frame_counts(path: str | Path) -> dict[str, int] | None:
    """Data frames per channel of a logger file (candump ``.log``, ``.asc``, ``.blf``, ``.trc``;
    ``.gz`` too), counted the way :func:`kdkit.data.read_messages` names the channels; None (with a
    warning) when the file cannot be read for it. A second pass over the file: ~0.1 s for the RAV4's
    1.1 MB candump log."""
    path = Path(path)
    try:
        return channel_counts(path)
    except (OSError, ValueError, KeyError) as err:  # (DataFormatError is a ValueError)
        log.warning("%s: the frames of other channels could not be counted (%s: %s)", path, type(err).__name__, err)
        return None


def _emit(summary: RunSummary, decisions: list[Decision], on_decision: Callable[[Decision], None] | None) -> None:
    for dec in decisions:
        summary.add(dec)
        if on_decision is not None:
            on_decision(dec)


def as_can_messages(msgs: Messages, channel: str | None = None) -> Iterator[can.Message]:
    """The rows of ``msgs`` as python-can messages (extended IDs flagged, data cut to the DLC)."""
    raw = msgs.can_id & np.uint32(~EXTENDED_ID_FLAG & 0xFFFFFFFF)
    ext = (msgs.can_id & np.uint32(EXTENDED_ID_FLAG)) != 0
    payload = msgs.payload
    for i in range(len(msgs)):
        yield can.Message(timestamp=float(msgs.timestamp[i]), arbitration_id=int(raw[i]), is_extended_id=bool(ext[i]),
                          data=payload[i, :int(msgs.dlc[i])].tobytes(), channel=channel)


_CHANNEL_IGNORED: set[tuple[str, str]] = set()  # (file, channel) already warned about in this process


def _frames_of(chunks: Iterable[Messages], channel: str | None,
               labelled: bool) -> Iterator[tuple[can.Message, bool, int | None]]:
    """``(frame, starts a new timeline, label)`` for the rows of ``chunks``: the reader's
    ``Messages.restart`` marks and (``labelled``) the rows' labels travel with the frames (python-can's
    messages have no room for them; a real-time replay of a labelled recording lost its labels)."""
    for chunk in chunks:
        starts = set(np.flatnonzero(chunk.restart).tolist()) if chunk.restart is not None else set()
        labels = chunk.label.tolist() if labelled else None
        for i, frame in enumerate(as_can_messages(chunk, channel)):
            yield frame, i in starts, labels[i] if labels is not None else None


def _paced(frames: Iterable[tuple], detector: Detector, summary: RunSummary,
           stall_seconds: float) -> Iterator[tuple]:
    """Frames (each with its new-timeline mark and label, :func:`_frames_of`) at their recorded pace, as a bus would deliver them:
    each when its time since the first has passed (``can.MessageSync`` paced nothing after a clock
    that went back: this re-anchors there). A recorded silence of ``stall_seconds`` or more is waited
    out and met as on a live bus: a stall, counted, after which the windows restart."""
    anchor: tuple[float, float] | None = None  # (a frame's timestamp, when it was fed)
    last = None
    for item in frames:
        frame = item[0]
        ts = frame.timestamp
        if anchor is None or ts < last:  # the first frame, or a clock that went back: pace from here
            anchor = (ts, time.perf_counter())
        else:
            delay = anchor[1] + (ts - anchor[0]) - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            if ts - last >= stall_seconds and detector.frames:
                summary.stalls += 1
                log.warning("%s: no frame for %.1f s in the recording (stall %d)", summary.source, ts - last,
                            summary.stalls)
                detector.stalled(ts - last)
        last = ts
        yield item


def replay_file(detector: Detector, path: str | Path, channel: str | None = None, realtime: bool = False,
                on_decision: Callable[[Decision], None] | None = None, on_bad_rows: str = "skip",
                max_messages: int | None = None, max_seconds: float | None = None, keep: bool = False,
                count_channels: bool = True, stall_seconds: float = 2.0) -> RunSummary:
    """Replay a recording through ``detector``; returns the run's summary.

    Args:
        detector: a fresh :class:`~kdkit.stream.detector.Detector`.
        path: any file :func:`kdkit.data.read_messages` reads (candump ``.log``, ``.asc``,
            ``.blf``, ``.trc``, CSV; ``.gz`` too).
        channel: keep only this channel of a logger file (CSV files have none).
        realtime: feed frame by frame at the recorded pace, as a bus would (:func:`_paced`: a
            recorded silence of ``stall_seconds`` is a stall); the latency is then per window. Otherwise blocks are fed as fast as they are built and scored.
        on_decision: called with every decision, in order.
        on_bad_rows: ``"skip"`` (default: dropped and counted in ``skipped_rows``, the first
            ones logged) or ``"error"``. A clock that restarts in the file is no bad row: the
            reader marks the new timeline and the windows restart on it (``timeline_restarts``).
        max_messages, max_seconds: stop after this many messages / seconds.
        keep: keep every decision in ``summary.decisions``.
        count_channels: with ``channel`` on a logger file, count the frames of the other channels
            the reader left out (:func:`channel_frame_counts`, after the run and outside its timing;
            only when the whole file was replayed) into ``detector.other_channels``.
    """
    path = Path(path)
    summary = RunSummary(detector, str(path), "realtime replay" if realtime else "replay", keep)
    logger = Path(path.name.lower().removesuffix(".gz")).suffix in LOGGER_SUFFIXES
    labelled = carries_labels(path)  # a logger file by its sidecar only, the HCRL/OTIDS text form never
    layout = training_layout(detector.reading, path) if path.is_file() else None  # the model's own layout
    if layout is not None:
        labelled = layout.label is not None
    if channel is not None and not logger and (str(path), channel) not in _CHANNEL_IGNORED:
        _CHANNEL_IGNORED.add((str(path), channel))  # once per file and process (kdkit bench detect replays it often)
        log.warning("%s: --channel %s ignored: this format has no channels", path, channel)
    summary.channel = channel if logger else None
    if logger and channel is None and path.name.lower().removesuffix(".gz").endswith(".log"):
        # the readers read the one channel a file's start holds, so buses that start later are left out, not
        # mixed in: a candump log's (counted after the run by a compiled pass) are named in the summary
        summary.channel = channel = read_channel(path)
    last: list[Messages] = []  # the last chunk read: it carries the file's skip and drop counts
    left = [max_messages]

    def chunks() -> Iterator[Messages]:
        """The recording in chunks (every built-in format streamed in bounded memory,
        kdkit.data.iter_messages), the time spent reading them counted."""
        t = time.perf_counter()
        if layout is not None:
            stream = iter_mapped(path, layout, on_bad_rows, REPLAY_CHUNK_ROWS)  # type: ignore[arg-type]
        elif path.is_file() and path.stat().st_size >= STREAM_BYTES:
            expect_messages(expected_messages(path))  # a long replay: the compiled graph builder from the start
            stream = iter_messages(path, on_bad_rows=on_bad_rows, channel=channel, chunk_rows=REPLAY_CHUNK_ROWS)
        else:  # (read whole: one chunk; a can-train-and-test CSV reads ~8 % faster so)
            stream = iter([read_messages(path, on_bad_rows=on_bad_rows, channel=channel)])
        summary.read_seconds += time.perf_counter() - t
        while True:
            t = time.perf_counter()
            try:
                chunk = next(stream)
            except StopIteration:
                return
            finally:
                summary.read_seconds += time.perf_counter() - t
            last[:] = [chunk]
            if left[0] is not None and len(chunk) >= left[0]:
                yield chunk.slice(0, left[0])
                summary.stopped_by = "max-messages"
                return
            if left[0] is not None:
                left[0] -= len(chunk)
            yield chunk

    try:
        if realtime:
            for frame, new_timeline, label in _paced(_frames_of(chunks(), channel, labelled), detector, summary,
                                                     stall_seconds):
                if max_seconds is not None and time.perf_counter() - summary._t0 >= max_seconds:
                    summary.stopped_by = "max-seconds"  # before the frame: the last frame of a file ends by its end
                    break
                if new_timeline:  # the reader's mark: no frame dropped as behind, windows as offline
                    detector.new_timeline(f"{path.name} message {detector.messages}")
                dec = detector.feed(frame, time.perf_counter(), label)
                if dec is not None:
                    _emit(summary, [dec], on_decision)
        else:
            first = True
            for chunk in chunks():
                for i in range(0, len(chunk), BLOCK_MESSAGES):
                    # asked before a block, not after it: a file decided whole in its first block ended by its end
                    if not first and max_seconds is not None and time.perf_counter() - summary._t0 >= max_seconds:
                        summary.stopped_by = "max-seconds"
                        break
                    first = False
                    _emit(summary, detector.feed_many(chunk.slice(i, i + BLOCK_MESSAGES), labelled=labelled),
                          on_decision)
                if summary.stopped_by == "max-seconds":
                    break
    except KeyboardInterrupt as stop:
        _stopped(summary, stop)
    if last:
        msgs = last[0]
        summary.skipped_rows = msgs.skipped_rows
        summary.truncated = truncation(msgs.skipped_examples)
        for kind, n in (getattr(msgs, "dropped_frames", None) or {}).items():  # remote/error frames the reader dropped
            if n:  # frames of the bus all the same: frames = messages + dropped + other channels, as live
                detector.dropped[f"{kind}_frame"] += int(n)
                detector.frames += int(n)
        if msgs.skipped_rows:
            log.warning("%s: %d bad rows skipped, e.g. %s", path, msgs.skipped_rows, "; ".join(msgs.skipped_examples[:3]))
    summary.finish()
    if summary.channel is not None and summary.channel != ALL_CHANNELS:  # ('*': every channel was read, none left out)
        # the reader leaves the other channels' frames out unread: count them (they are not bad frames)
        counts = None
        if not count_channels:
            summary.other_channels_note = "not asked for"
        elif summary.stopped_by != "end of input":
            summary.other_channels_note = "the replay stopped before the end of the file"
        else:
            counts = channel_frame_counts(path)
            if counts is None:
                summary.other_channels_note = "the file could not be read for it; see the warning"
        if counts is not None:
            for name, n in counts.items():
                if name != channel and n:
                    detector.other_channels[name] += int(n)
                    detector.frames += int(n)
    return summary


def open_bus(spec: str, **kwargs) -> can.BusABC:
    """A python-can bus from ``INTERFACE:CHANNEL`` (``socketcan:can0``, ``virtual:demo``);
    ``kwargs`` go to ``can.Bus``. Raises :class:`BusError` naming the bus when it cannot be opened."""
    iface, sep, channel = spec.partition(":")
    if not sep or not iface or not channel:
        raise BusError(f"bus {spec!r}: expected INTERFACE:CHANNEL, e.g. socketcan:can0 or virtual:demo")
    try:
        return can.Bus(interface=iface, channel=channel, **kwargs)
    except (can.CanError, OSError, ImportError, NotImplementedError, ValueError, TypeError) as err:
        hint = ""
        if isinstance(err, OSError) and err.errno == errno.EAFNOSUPPORT:  # no AF_CAN: the kernel lacks SocketCAN
            hint = ("; this machine's kernel has no SocketCAN (the can and vcan modules: modprobe vcan, or a kernel "
                    "or container with CAN support); python-can's udp_multicast interface works without it")
        elif isinstance(err, OSError) and err.errno == errno.ENODEV:
            hint = f"; no interface {channel!r} here (`ip link show` lists them; a virtual one: ip link add dev " \
                   f"{channel} type vcan && ip link set up {channel})"
        raise BusError(f"cannot open bus {spec} (python-can interface {iface!r}, channel {channel!r}): "
                       f"{type(err).__name__}: {err}{hint}") from err


def listen_bus(detector: Detector, bus: can.BusABC, source: str | None = None,
               on_decision: Callable[[Decision], None] | None = None, max_seconds: float | None = None,
               max_messages: int | None = None, stall_seconds: float = 2.0, keep: bool = False) -> RunSummary:
    """Detect on a live bus until ``max_seconds``, ``max_messages`` frames, a lost connection or
    Ctrl-C; returns the run's summary (its ``error`` says why a lost connection ended it).

    A stall (no frame for ``stall_seconds``) is logged and counted once per silence; the loop
    goes on. Latency is measured from the moment ``recv`` returned the window's last frame."""
    source = source or getattr(bus, "channel_info", None) or str(bus)
    summary = RunSummary(detector, source, "live", keep)
    last_frame = started = time.perf_counter()
    stalled = waited = False
    try:
        while True:
            now = time.perf_counter()
            timeout = stall_seconds
            if max_seconds is not None:
                left = max_seconds - (now - summary._t0)
                if left <= 0:
                    summary.stopped_by = "max-seconds"
                    break
                timeout = min(timeout, left)
            try:
                frame = bus.recv(timeout=timeout)
            except (can.CanError, OSError) as err:
                summary.stopped_by = "lost connection"
                summary.error = f"lost connection to {source}: {type(err).__name__}: {err}"
                log.error("%s", summary.error)
                break
            arrival = time.perf_counter()
            if frame is None:
                if not detector.frames:  # no frame yet: a bus that has not started is no stall
                    if not waited and arrival - started >= stall_seconds:
                        waited = True
                        log.warning("%s: no frame yet after %.1f s; still listening", source, arrival - started)
                elif not stalled and arrival - last_frame >= stall_seconds:
                    stalled = True
                    summary.stalls += 1
                    log.warning("%s: no frame for %.1f s (stall %d); still listening", source, arrival - last_frame,
                                summary.stalls)
                    detector.stalled(arrival - last_frame)  # no window spans the silence
                continue
            if stalled:
                log.warning("%s: frames again after %.1f s of silence", source, arrival - last_frame)
                stalled = False
            last_frame = arrival
            dec = detector.feed(frame, arrival)
            if dec is not None:
                _emit(summary, [dec], on_decision)
            if max_messages is not None and detector.frames >= max_messages:
                summary.stopped_by = "max-messages"
                break
    except KeyboardInterrupt as stop:
        _stopped(summary, stop)
    return summary.finish()


def run_detection(detector: Detector, recording: str | Path | None = None, bus: str | None = None,
                  channel: str | None = None, realtime: bool = False,
                  on_decision: Callable[[Decision], None] | None = None, max_seconds: float | None = None,
                  max_messages: int | None = None, stall_seconds: float = 2.0, on_bad_rows: str = "skip",
                  keep: bool = False) -> RunSummary:
    """Detect over a ``recording`` (:func:`replay_file`) or a live ``bus`` given as
    ``INTERFACE:CHANNEL`` (:func:`open_bus` + :func:`listen_bus`, shut down at the end): exactly
    one of them. Raises :class:`BusError` when the bus cannot be opened."""
    if (recording is None) == (bus is None):
        raise ValueError("run_detection: give a recording or a bus (exactly one)")
    if recording is not None:
        return replay_file(detector, recording, channel=channel, realtime=realtime, on_decision=on_decision,
                           on_bad_rows=on_bad_rows, max_messages=max_messages, max_seconds=max_seconds, keep=keep,
                           stall_seconds=stall_seconds)
    with open_bus(bus) as live:
        return listen_bus(detector, live, source=bus, on_decision=on_decision, max_seconds=max_seconds,
                          max_messages=max_messages, stall_seconds=stall_seconds, keep=keep)
