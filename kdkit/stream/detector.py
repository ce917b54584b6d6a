"""A streaming detector: CAN frames in, one decision per closed window out.

    det = Detector.from_exported("student.pt2")          # or Detector.from_checkpoint("best.pt")
    decision = det.feed(msg)                             # a can.Message or (timestamp, id, data, is_extended)
    if decision is not None and decision.is_attack: ...  # an alarm
    decisions = det.feed_many(read_messages("capture.log"))   # a batch: vectorized

Windows are the offline ones: window ``k`` holds messages ``k * stride .. k * stride + window - 1``
of the stream (the model's window and stride, from its checkpoint or export metadata; a
smaller stride slides). A window closes with its last message; its graph is built from the
buffered messages plus the one before it (the bus-load feature looks one message back), so
graphs and scores equal those of :func:`kdkit.data.graphs.build_graphs` over the whole recording
(tested). :meth:`Detector.feed_many` builds the graphs of every window a batch closes in one
``build_graphs`` call and scores them in batches; :meth:`Detector.feed` of an exported student
builds the one window it closes with :func:`kdkit.stream.window.window_graph` (one compiled
loop over the window, no GraphSet) and scores it straight away: a GAT classifier (checkpoint, or
an export with its ``.npz`` weights) with :class:`kdkit.models.native.NativeGAT` (one compiled
loop from features to logits), any other exported student through the package's direct call.
:attr:`Detector.engine` says which (``"native"``, ``"package"``, ``"torch"``: a VGAE checkpoint's
batch path, for every window); :attr:`Detector.batch_engine` says what scores the blocks of
:meth:`~Detector.feed_many` (an export's package; a GAT checkpoint's native engine, a VGAE's model).

Scores are the kit's: a GAT checkpoint's attack probability and a VGAE checkpoint's anomaly
score (both through :func:`kdkit.reporting.metrics.predict_scores`, as ``kdkit evaluate``), an
exported GAT student's ``softmax(logits)[:, 1]``, an exported fusion student's fused score; a window is an attack when ``score >=
threshold`` (:func:`kdkit.models.thresholds.is_attack`).

Frames that cannot be a classic CAN data frame are dropped, logged (the first few of each
kind) and counted in :attr:`Detector.dropped` (:data:`DROP_REASONS`); feeding never raises for
a bad frame. Timestamps are the frames' own; a stream whose timestamps come faster than a CAN
bus can carry them (a source that re-stamps frames on sending or arrival, e.g. python-can's
virtual bus without ``preserve_timestamps=True``) is warned about once. So is a bus that does not
look like a vehicle the model was trained on (:class:`VehicleCheck`: most IDs of most windows
outside the model's vocabulary), whose normal traffic the model's threshold was not calibrated
for; :attr:`Detector.unknown_vehicle` and the run summary carry the verdict.
"""
from __future__ import annotations

import json
import logging
import math
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from kdkit.data.datasets import file_sha256
from kdkit.data.graphs import GRAPH_FORMAT_VERSION, GraphSet, IdVocab, build_graphs, layout_matches
from kdkit.data.loader import WindowBatch, gather_windows
from kdkit.data.loggers import ALL_CHANNELS
from kdkit.data.readers import EXTENDED_ID_FLAG, MAX_CAN_ID, MAX_STANDARD_ID, Messages
from kdkit.deploy.export import check_metadata, load_exported, native_weights_path
from kdkit.models.native import NativeGAT, unsupported_reason
from kdkit.models.thresholds import GAT_THRESHOLD, is_attack
from kdkit.reporting.metrics import predict_scores
from kdkit.stream.window import WindowGraph, window_graph
from kdkit.training.checkpoint import (check_threshold_fitted, describe_calibration, file_kind, load_checkpoint,
                                      model_from_checkpoint, provenance)
from kdkit.workflows.run import check_graph_settings

log = logging.getLogger("kdkit.stream")

DROP_REASONS = {
    "error_frame": "an error frame",
    "remote_frame": "a remote (RTR) frame",
    "fd_frame": "more than 8 data bytes (CAN FD; the models read classic CAN; FD frames of <= 8 bytes are kept)",
    "bad_id": "an arbitration ID outside 0..0x7FF (standard) or 0..0x1FFFFFFF (extended)",
    "bad_payload": "data that is not bytes",
    "bad_timestamp": "a timestamp that is not a finite number",
    "time_backwards": "a timestamp earlier than the previous frame's",
    "time_glitch": ("a timestamp later than the frame after it, which follows on from the frame before it: a "
                    "glitched timestamp; that frame alone is dropped, as the file readers skip such a row"),
    "bad_frame": "neither a can.Message nor a (timestamp, id, data, is_extended) tuple",
}
"""Why a frame was dropped: key -> description (the keys of :attr:`Detector.dropped`). Frames of
another channel than the detector's are not dropped as bad: they are left out and counted per
channel in :attr:`Detector.other_channels`."""

LOGGED_PER_REASON = 3  # dropped frames logged one by one per reason; the rest are only counted

RESTAMP_SPAN = 256  # timestamps per re-stamping check
# frames in a row, in order among themselves, that went back in time before the detector takes their timeline:
# one frame stamped in the future (a glitch) or a clock stepped back would otherwise blind it until the clock
# catches up (forever after an interface's timestamp counter resets)
RESTART_AFTER = 8
MIN_MEAN_GAP_S = 40e-6  # a CAN bus at 1 Mbit/s carries at most ~21,000 frames/s (a gap of ~47 us)

BLOCK_MESSAGES = 1 << 16  # feed_many works through large inputs in blocks of this many messages

ENGINES = ("auto", "native", "package", "torch")
"""How :meth:`Detector.feed` scores the one window a frame closes (and, for a checkpoint, how
:meth:`Detector.feed_many` scores its blocks): ``auto`` (the native engine where it applies, else
the package's direct call for an export or the model for a checkpoint), ``native``
(:class:`~kdkit.models.native.NativeGAT`; an error where it does not apply), ``package`` (an
export's AOTInductor package), ``torch`` (a checkpoint's PyTorch model). An export's blocks always
run its package (faster than the native engine on batches)."""

MODEL_ENGINES = {"--checkpoint": ("auto", "native", "torch"), "--model": ("auto", "native", "package")}
"""The :data:`ENGINES` each kind of model runs on: a checkpoint (:meth:`Detector.from_checkpoint`)
and an exported ``.pt2`` (:meth:`Detector.from_exported`), keyed by their ``kdkit detect`` option."""


def format_can_id(key: int) -> str:
    """A ``Messages.can_id`` as candump writes it: 3 hex digits, 8 for an extended ID."""
    key = int(key)
    return f"{key & ~EXTENDED_ID_FLAG:08X}" if key & EXTENDED_ID_FLAG else f"{key:03X}"


@dataclass(frozen=True)
class Decision:
    """The verdict on one closed window. An alarm is a decision with ``is_attack``.

    Attributes:
        window: the window's number in the stream (0, 1, ...).
        first_message: index of its first message among the accepted messages.
        start_time, end_time: the timestamps of its first and last message.
        messages: messages in the window (the model's window).
        score: attack probability (GAT) or anomaly score (VGAE).
        threshold: the decision threshold; ``is_attack`` is ``score >= threshold``.
        is_attack: the decision.
        oov_ids: CAN IDs in the window outside the model's vocabulary (``Messages.can_id`` keys).
        latency_s: seconds from the arrival of its last message (when fed) to the decision.
        cpu_s: CPU seconds this thread spent from feeding that message to the decision (the
            latency without waiting for a core: on a busy machine the two differ).
        attack_share: share of messages labelled attack, when the input was a labelled
            :class:`~kdkit.data.readers.Messages` (None for frames).
    """

    window: int
    first_message: int
    start_time: float
    end_time: float
    messages: int
    score: float
    threshold: float
    is_attack: bool
    oov_ids: tuple[int, ...] = ()
    latency_s: float | None = None
    attack_share: float | None = None
    cpu_s: float | None = None

    def to_dict(self) -> dict:
        """JSON-ready: IDs as candump hex strings, the latency in milliseconds."""
        out = {"window": self.window, "first_message": self.first_message, "start_time": self.start_time,
               "end_time": self.end_time, "messages": self.messages, "score": self.score, "threshold": self.threshold,
               "is_attack": self.is_attack, "oov_ids": [format_can_id(i) for i in self.oov_ids],
               "latency_ms": None if self.latency_s is None else round(self.latency_s * 1e3, 4),
               "cpu_ms": None if self.cpu_s is None else round(self.cpu_s * 1e3, 4)}
        if self.attack_share is not None:
            out["attack_share"] = self.attack_share
        return out


class _Drop(Exception):
    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason, self.detail = reason, detail


def _frame_fields(frame) -> tuple[float, int, bytes, str | None]:
    """(timestamp, Messages.can_id key, data, channel) of a frame; raises _Drop for a bad one."""
    if hasattr(frame, "arbitration_id"):  # a python-can Message
        if getattr(frame, "is_error_frame", False):
            raise _Drop("error_frame", f"error frame at {frame.timestamp}")
        if getattr(frame, "is_remote_frame", False) and not getattr(frame, "is_fd", False):  # FD has no remote frames
            raise _Drop("remote_frame", f"remote frame ID 0x{frame.arbitration_id:X} at {frame.timestamp}")
        ts, arb, data, ext = frame.timestamp, frame.arbitration_id, frame.data, frame.is_extended_id
        channel = frame.channel
    else:
        try:
            ts, arb, data, ext = frame
        except (TypeError, ValueError):
            raise _Drop("bad_frame", f"{type(frame).__name__} {str(frame)[:80]!r}") from None
        channel = None
    try:
        ts = float(ts)
    except (TypeError, ValueError):
        raise _Drop("bad_timestamp", f"timestamp {ts!r}") from None
    if not math.isfinite(ts) or ts < 0:  # (a recording's reader refuses a negative timestamp, Messages too)
        raise _Drop("bad_timestamp", f"timestamp {ts!r}" + (" (negative)" if ts < 0 else ""))
    if isinstance(arb, bool) or not isinstance(arb, (int, np.integer)) or arb < 0 \
            or arb > (MAX_CAN_ID if ext else MAX_STANDARD_ID):
        shown = f"0x{arb:X}" if isinstance(arb, (int, np.integer)) and not isinstance(arb, bool) and arb >= 0 else repr(arb)
        raise _Drop("bad_id", f"{'extended' if ext else 'standard'} ID {shown} at {ts}")
    try:
        if isinstance(data, (int, np.integer)):  # bytes(5) is five zero bytes: a count, not data
            raise TypeError(data)
        data = bytes(data if data is not None else b"")
    except (TypeError, ValueError):
        raise _Drop("bad_payload", f"data {data!r} of ID 0x{arb:X} at {ts}") from None
    if len(data) > 8:
        raise _Drop("fd_frame", f"{len(data)} data bytes in ID 0x{arb:X} at {ts}")  # as kdkit.data.loggers
    return ts, int(arb) | (EXTENDED_ID_FLAG if ext else 0), data, None if channel is None else str(channel)


class _RestampCheck:
    """Warns once when timestamps come faster than a CAN bus can carry frames: on average
    less than :data:`MIN_MEAN_GAP_S` apart over :data:`RESTAMP_SPAN` consecutive frames."""

    def __init__(self, where: str, shown: set[str] | None = None):
        self.where, self.warned = where, False
        self._shown = set() if shown is None else shown  # warnings already given (shared by clones)
        self._tail = np.zeros(0)

    def restart(self) -> None:
        """The frames' timeline restarted: spacing is measured on the new one from here."""
        self._tail = np.zeros(0)

    def check(self, ts: np.ndarray) -> None:
        if self.warned or ts.size == 0:
            return
        arr = np.concatenate([self._tail, ts]) if self._tail.size else ts
        n = RESTAMP_SPAN - 1  # gaps per check
        if arr.size <= n:
            self._tail = arr.copy()
            return
        # every RESTAMP_SPAN consecutive frames, not fixed blocks of them: a burst across two blocks went unseen
        gaps = (arr[n:] - arr[:-n]) / n
        idx = np.arange(gaps.size)
        self._tail = arr[-n:].copy()
        low = np.flatnonzero(gaps < MIN_MEAN_GAP_S)
        if low.size:
            self.warned = True
            if "restamped" in self._shown:
                return
            self._shown.add("restamped")
            gap = float(gaps[low[0]])
            wall = abs(float(arr[idx[low[0]] + n]) - time.time()) < 60
            log.warning(
                "%s: frame timestamps come %s apart on average over %d frames, faster than a CAN bus carries "
                "frames (a frame takes at least ~47 us at 1 Mbit/s; warned below 40 us)%s: they are not the frames' bus times, the timing features collapse and "
                "windows will alarm. Fix: keep the recorded timestamps: python-can's virtual bus re-stamps every "
                "frame with its send time unless the sending bus is created with preserve_timestamps=True "
                "(can.Bus(interface='virtual', channel=..., preserve_timestamps=True)); pace a replay with "
                "can.MessageSync (kdkit detect --realtime), or feed (timestamp, id, data, is_extended) tuples with "
                "the recorded times. This warning is shown once.",
                self.where, f"{gap * 1e6:.1f} us" if gap > 0 else "0 s", RESTAMP_SPAN,
                " and equal the wall clock (stamped on sending or arrival)" if wall else "")


UNKNOWN_VEHICLE_WINDOWS = 100  # windows judged before the verdict on the bus
UNKNOWN_VEHICLE_ID_SHARE = 0.5  # a window "of another vehicle": more than this share of its IDs unknown
UNKNOWN_VEHICLE_WINDOW_SHARE = 0.75  # ... in at least this share of the judged windows


class VehicleCheck:
    """Whether the bus looks like a vehicle the model does not know, judged once from its first
    :data:`UNKNOWN_VEHICLE_WINDOWS` windows.

    A window's *unknown share* is the share of its distinct IDs (its nodes) outside the model's
    vocabulary. On a vehicle the model was trained on it is ~0, and an attack with new IDs raises
    it only in the windows it hits: a DoS on one new ID adds one node in ~30, fuzzing fills some
    windows with random IDs but leaves the windows between its bursts alone. On a vehicle the
    model does not know, nearly every ID is unknown in every window (the hcrl_sa Spark under a
    model of the Kia and the Sonata). So the bus is judged *unknown* when at least
    :data:`UNKNOWN_VEHICLE_WINDOW_SHARE` of the judged windows have an unknown share above
    :data:`UNKNOWN_VEHICLE_ID_SHARE`. The detector then warns once: the threshold was set on the
    training vehicles' normal traffic, and another car's normal traffic lies elsewhere (docs/QUALITY.md,
    "Fusion on the real hcrl_sa": false-positive rates of 0.6-1.0 there), so the alarms mean little
    until the model is calibrated on a clean capture of this car (``kdkit calibrate``; a fusion
    model also learns its IDs with ``--adapt``). The per-window decisions are not changed.

    Measured with a GAT student of hcrl_sa (Kia and Sonata): every window of the Spark's three
    recordings and of the RAV4's can0 is mostly unknown (share of windows 1.0: warned); every
    recording of the Kia and the Sonata gives 0.0, their DoS and fuzzing attacks included,
    although 78-98 % of the fuzzing windows are mostly unknown IDs: the attack windows are
    interleaved with normal ones, and the first 100 windows of those drives hold no attack. A bus
    fuzzed from its first window on would be judged unknown too, which the warning says. A car
    that shares the training vehicles' IDs (the simulator's ``charlie``) is not flagged: this
    check sees IDs, not timing or payloads.

    ``calibration``: the calibration record of a model ``kdkit calibrate`` re-set (a checkpoint's
    ``provenance["calibration"]``, an export's ``calibration`` metadata). Its threshold then was
    set on the capture the record names, not on the training vehicles' traffic: the warning says
    so instead of asking for a calibration. ``shown``: warnings already given, shared by a
    detector's clones so that a command replaying a file several times warns once.
    """

    def __init__(self, name: str, windows: int = UNKNOWN_VEHICLE_WINDOWS, calibration: dict | None = None,
                 shown: set[str] | None = None):
        self.name, self.needed = name, int(windows)
        self.calibration = calibration or None
        self._shown = set() if shown is None else shown
        self.family: str | None = None  # the model's family (gat, vgae, fusion), for the advice; set by the loaders
        self.channel: str | None = None  # the channel the detector reads, for the advice
        self.source_checkpoint: str | None = None  # an export's checkpoint (its metadata), for the advice
        self.verdict: bool | None = None  # None until judged
        self.share_of_windows: float | None = None  # of the judged windows, those mostly of unknown IDs
        self._mostly_unknown = self._seen = 0
        self._unknown_ids: Counter[int] = Counter()

    def _calibrate_command(self) -> str:
        """The ``kdkit calibrate`` command for this model and bus (an export: its checkpoint's, then export)."""
        channel = f" --channel {self.channel}" if self.channel else ""
        model = Path(self.name)
        if model.suffix == ".pt2":
            source = self.source_checkpoint or "BEST.pt"
            return (f"kdkit calibrate --checkpoint {source} --clean CLEAN_CAPTURE{channel} --fpr 0.01 --out car.pt "
                    f"(the checkpoint {model.name} was exported from), then kdkit export --checkpoint car.pt --out "
                    f"{model.with_name(model.stem + '_car.pt2')}")
        return (f"kdkit calibrate --checkpoint {self.name} --clean CLEAN_CAPTURE{channel} --fpr 0.01 --out "
                f"{model.with_name(model.stem + '_car.pt')}")

    def add(self, nodes: np.ndarray, unknown: np.ndarray, unknown_ids: list[tuple[int, ...]]) -> None:
        """Consecutive windows' node counts, unknown-node counts and unknown IDs (one tuple a window)."""
        if self.verdict is not None or nodes.size == 0:
            return
        take = min(nodes.size, self.needed - self._seen)
        nodes, unknown = nodes[:take], unknown[:take]
        self._mostly_unknown += int((unknown > UNKNOWN_VEHICLE_ID_SHARE * np.maximum(nodes, 1)).sum())
        self._seen += take
        for ids in unknown_ids[:take]:
            self._unknown_ids.update(ids)
        if self._seen >= self.needed:
            self._judge()

    def _judge(self) -> None:
        self.share_of_windows = self._mostly_unknown / self._seen
        self.verdict = self.share_of_windows >= UNKNOWN_VEHICLE_WINDOW_SHARE
        if self.verdict and "unknown_vehicle" not in self._shown:
            self._shown.add("unknown_vehicle")
            examples = ", ".join(format_can_id(i) for i, _ in self._unknown_ids.most_common(5))
            if self.calibration is not None:
                adapted = self.calibration.get("kind") == "adapt"
                log.warning(
                    "%s: most IDs on this bus are outside the model's training vocabulary: in %.0f %% of the first %d "
                    "windows (%d such IDs, e.g. %s). %s %s, not on the training vehicles' traffic: "
                    "its false-alarm rate holds for traffic like that capture's; the model still cannot tell this "
                    "car's unknown IDs from injected ones. This warning is shown once.",
                    self.name, 100 * self.share_of_windows, self._seen, len(self._unknown_ids), examples,
                    "The model was adapted (kdkit calibrate --adapt) to" if adapted else
                    "Its threshold was calibrated (kdkit calibrate) on", describe_calibration(self.calibration))
                return
            fusion = self.family == "fusion"
            log.warning(
                "%s: this bus does not look like a vehicle the model was trained on: in %.0f %% of the first %d "
                "windows most IDs are outside the model's vocabulary (%d such IDs, e.g. %s). Its threshold was set "
                "on the training vehicles' normal traffic, so its decisions here are unreliable: false alarms, or "
                "attacks missed%s, or an attack that sends mostly new IDs from the start. Calibrate the model on a "
                "clean capture of this car first: %s%s. This warning is shown once.",
                self.name, 100 * self.share_of_windows, self._seen, len(self._unknown_ids), examples,
                " (a fusion model judges an unknown car by its classifier alone)" if fusion else "",
                self._calibrate_command(), " (a fusion model also learns the car's IDs with --adapt)" if fusion else "")


class Detector:
    """Windows -> graphs -> scores -> decisions over a stream of CAN frames.

    Args:
        score_windows: ``GraphSet -> float array [windows]`` (the model's scores; see
            :meth:`from_checkpoint`, :meth:`from_exported`).
        vocab: the model's ID vocabulary.
        window, stride: messages per window and between window starts (stride < window slides).
        threshold: a window is an attack when ``score >= threshold``.
        label_threshold: the model's label rule, for ``attack_share`` of labelled input.
        channel: keep only frames of this channel (frames without a channel are kept).
        name: the model's name in messages.
        score_batch: ``WindowBatch -> float array [windows]``, the same scores on a batch of
            windows' tensors (:class:`kdkit.data.loader.WindowBatch`); given, :meth:`feed`
            builds the window it closes with :func:`~kdkit.stream.window.window_graph` and
            scores it without a ``GraphSet`` (the latency path of an exported student).
        score_graph: ``WindowGraph -> float``, one window's score, equal to
            ``score_batch(graph.batch())[0]`` up to float rounding at less cost a call (default: that).
        engine: what ``score_graph`` runs, for summaries (``"native"``, ``"package"``, ``"torch"``).
        batch_engine: what ``score_windows`` runs on :meth:`feed_many`'s blocks (default
            ``"package"`` given ``score_batch``, else ``"torch"``).
        calibration: the model's calibration record (``kdkit calibrate``), when it has one: the
            unknown-vehicle warning names what the threshold was calibrated on.
        shown: the once-only warnings already given (:meth:`clone` shares its detector's).
    """

    def __init__(self, score_windows: Callable[[GraphSet], np.ndarray], vocab: IdVocab, window: int,
                 stride: int | None = None, threshold: float = GAT_THRESHOLD, label_threshold: float = 0.0,
                 channel: str | None = None, name: str = "model",
                 score_batch: Callable[[WindowBatch], np.ndarray] | None = None,
                 score_graph: Callable[[WindowGraph], float] | None = None, engine: str | None = None,
                 batch_engine: str | None = None, calibration: dict | None = None, shown: set[str] | None = None):
        stride = window if stride is None else stride
        _check_stride(stride, name)
        if int(window) < 2:
            raise ValueError(f"{name}: window must be >= 2 messages, got window={window}")
        if not math.isfinite(float(threshold)):
            raise ValueError(f"{name}: --threshold {threshold!r} is not a finite number")
        self.score_windows, self.score_batch, self.vocab, self.name = score_windows, score_batch, vocab, name
        if score_graph is None and score_batch is not None:
            def score_graph(graph: WindowGraph) -> float:
                return float(score_batch(graph.batch())[0])
        self.score_graph = score_graph
        self.engine = engine or ("package" if score_graph is not None else "torch")
        self.batch_engine = batch_engine or ("package" if score_batch is not None else "torch")  # feed_many's blocks
        self.window, self.stride, self.threshold = int(window), int(stride), float(threshold)
        # '*' (ALL_CHANNELS): every channel on purpose, as the logger readers take it
        self.label_threshold, self.channel = float(label_threshold), None if channel == ALL_CHANNELS else channel
        self.dropped: Counter[str] = Counter()
        self.other_channels: Counter[str] = Counter()  # frames of other channels left out, per channel
        self.windows = self.alarms = self.frames = 0
        self.calibration = calibration or None
        self.reading: dict | None = None  # how the model's training data were read (a column mapping), for replays
        self._shown: set[str] = set() if shown is None else shown
        self._restamp = _RestampCheck(name, self._shown)
        self.vehicle = VehicleCheck(name, calibration=self.calibration, shown=self._shown)
        self.vehicle.channel = self.channel
        cap = max(4 * self.window, 1024)
        self._ts, self._id = np.zeros(cap), np.zeros(cap, np.uint32)
        self._dlc, self._pl, self._lab = np.zeros(cap, np.uint8), np.zeros((cap, 8), np.uint8), np.zeros(cap, np.uint8)
        self._n = 0          # buffered rows
        self._base = 0       # stream index of buffer row 0
        self._next = 0       # stream index of the next window's first message
        self._last_ts = -math.inf
        # the largest timestamp accepted before the last frame; math.inf: the last frame is not withdrawn as a glitch
        self._prev_ts = -math.inf
        self._decided_to = -1  # stream index of the last message in a decided window
        self._timeline_start = 0  # stream index where the current timeline's windows may start
        self.undecided = 0  # messages left in no decided window at restarts and stalls
        self.between = 0  # messages a stride longer than the window passed over (none otherwise)
        self._one: list[float] = []  # timestamps fed one by one, for the re-stamping check
        self.timeline_restarts = 0  # times the frames' clock went back and the detector took the new timeline
        self._behind = 0  # frames in a row behind _last_ts, in order among themselves
        self._behind_ts = -math.inf
        # those frames, held until the RESTART_AFTER-th confirms a restarted clock (they then start the new
        # timeline) or a frame in line with the old one shows them stamped in the past (then dropped):
        # (timestamp, key, dlc, payload[8], label, what a drop says)
        self._held: list[tuple[float, int, int, np.ndarray, int, str]] = []

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_checkpoint(cls, path: str | Path, threshold: float | None = None, stride: int | None = None,
                        channel: str | None = None, batch_size: int = 256, engine: str = "auto") -> Detector:
        """A detector for a kdkit checkpoint (GAT or VGAE), in eval mode, with its vocabulary,
        window, stride and threshold (``threshold``/``stride`` override them). ``engine``: see
        :data:`ENGINES` (a GAT classifier runs natively by default, single windows and blocks alike)."""
        _check_engine(engine, "--checkpoint", path)
        if stride is not None:
            _check_stride(stride, path)
        ckpt = load_checkpoint(path)
        graph = check_graph_settings(ckpt, path)
        if threshold is None:
            check_threshold_fitted(ckpt, path, "run as a detector")
        _check_layout(ckpt.get("node_features"), ckpt.get("edge_features"),
                      provenance(ckpt, path).get("graph", {}).get("graph_format"), path, ckpt.get("vocab"))
        if not ckpt.get("vocab"):
            raise ValueError(f"{path} holds no ID vocabulary: use a checkpoint written by kdkit train")
        model = model_from_checkpoint(ckpt, path).eval()
        probability = not (hasattr(model, "window_score") or hasattr(model, "anomaly_score"))  # a GAT classifier
        if threshold is not None:
            _check_threshold(threshold, probability, path)

        def score(gs: GraphSet) -> np.ndarray:
            return predict_scores(model, gs, batch_size=batch_size)

        thr = float(ckpt.get("threshold", GAT_THRESHOLD)) if threshold is None else threshold
        score_graph, used = None, "torch"
        if engine != "torch":
            why = unsupported_reason(model)
            if why is None:  # the native engine: single windows, and blocks too (1.2-1.4x the eager model's speed)
                native = NativeGAT.from_model(model)
                score, score_graph, used = native.attack_probability, _native_scorer(native), "native"
            elif engine == "native":
                raise ValueError(f"{path}: the native engine cannot run {why}; use engine 'auto' or 'torch'")
        det = cls(score, IdVocab.from_list(ckpt["vocab"]), graph["window"], graph["stride"] if stride is None else stride,
                  thr, graph.get("label_threshold") or 0.0, channel, name=str(path), score_graph=score_graph,
                  engine=used, batch_engine=used, calibration=provenance(ckpt, path).get("calibration"))
        det.vehicle.family = (ckpt.get("model_config") or {}).get("kind")
        det.reading = provenance(ckpt, path).get("reading")
        det.warm_up()
        return det

    @classmethod
    def from_exported(cls, path: str | Path, threshold: float | None = None, stride: int | None = None,
                      channel: str | None = None, batch_size: int = 128, engine: str = "auto") -> Detector:
        """A detector for an exported ``.pt2`` (``kdkit export``), configured from the ``.json``
        metadata beside it (vocabulary, feature layout, window, stride, threshold). A GAT's package
        (``output_kind`` ``"logits"``) scores ``softmax(logits)[:, 1]``, a fusion student's
        (``"score"``) its fused score as it comes. Batches (:meth:`feed_many`) run the package; a
        single window (:meth:`feed`) runs the native engine when the ``.npz`` of native weights
        ``kdkit export`` writes for a GAT lies beside the package, else the package's direct call
        (``engine``: see :data:`ENGINES`)."""
        _check_engine(engine, "--model", path)
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"model file {path} does not exist" + (" (a folder)" if path.is_dir() else "")
                                    + ": --model takes an exported .pt2 written by kdkit export")
        kind = file_kind(path)
        if kind == "checkpoint":
            raise ValueError(f"{path} is a training checkpoint, not an exported model: run it with --checkpoint {path}, "
                             f"or export it first (kdkit export --checkpoint {path}) and pass the .pt2 to --model")
        if kind in ("export_metadata", "native_weights"):
            raise ValueError(f"{path} is the {'metadata' if kind == 'export_metadata' else 'native-engine weights'} of "
                             f"an exported model, not its package: pass the .pt2 to --model ({path.with_suffix('.pt2')}, "
                             f"with {path.with_suffix('.json').name} and {path.with_suffix('.npz').name} beside it)")
        if kind == "recording":
            raise ValueError(f"{path} is a CAN recording, not an exported model: replay it with --input {path}, and give "
                             f"--model the .pt2 kdkit export writes")
        if stride is not None:
            _check_stride(stride, path)
        meta_path = path.with_suffix(".json")
        if not meta_path.is_file():
            raise FileNotFoundError(f"{meta_path} not found: an exported model needs the metadata kdkit export writes "
                                    f"beside the package (vocabulary, window, threshold)")
        try:
            meta = json.loads(meta_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ValueError(f"{meta_path} is not the JSON kdkit export writes beside {path.name} ({err}): a file "
                             f"written over it? export the model again") from None
        if not isinstance(meta, dict):
            raise ValueError(f"{meta_path} is not the metadata kdkit export writes beside {path.name}: export the "
                             f"model again")
        check_metadata(meta, meta_path)  # before anything is read from it: an edited field is not this export's
        missing = [k for k in ("vocab", "window", "stride", "node_features", "edge_features") if meta.get(k) is None]
        if missing:
            raise ValueError(f"{meta_path} lacks {', '.join(missing)}: re-export the model with kdkit export")
        _check_layout(meta["node_features"], meta["edge_features"], meta.get("graph_format"), meta_path, meta["vocab"])
        vocab = IdVocab.from_list(meta["vocab"])
        num_ids = (meta.get("model_config") or {}).get("num_ids")
        if num_ids is not None and len(vocab) > num_ids:
            raise ValueError(f"{meta_path}: a vocabulary of {len(vocab)} IDs for a model of num_ids={num_ids}: the "
                             f"metadata is not this package's; re-export the model with kdkit export")
        # the detector builds every graph with this vocabulary, so node IDs and edge endpoints are in
        # range by construction: the per-batch range check (~30 us a window) is left out
        program = load_exported(path, validate=num_ids is None)

        logits = getattr(program, "output_kind", "logits") == "logits"
        if threshold is not None:
            _check_threshold(threshold, logits, path)  # a GAT's score is a probability, a fusion student's is not

        def score_batch(batch: WindowBatch) -> np.ndarray:
            with torch.no_grad():
                out = program(batch).float()
                return (torch.softmax(out, dim=-1)[:, 1] if logits else out).numpy()

        def score(gs: GraphSet) -> np.ndarray:
            out = [score_batch(gather_windows(gs, np.arange(i, min(i + batch_size, len(gs)))))
                   for i in range(0, len(gs), batch_size)]
            return np.concatenate(out) if out else np.zeros(0, np.float32)

        thr = float(meta.get("threshold") if meta.get("threshold") is not None else GAT_THRESHOLD)
        score_graph, used = _graph_scorer(program, logits), "package"
        native = _native_weights(path, meta, meta_path, engine) if engine != "package" and logits else None
        if native is not None:
            if native.num_ids < len(vocab):
                raise ValueError(f"{native_weights_path(path)}: native weights for num_ids={native.num_ids} beside a "
                                 f"vocabulary of {len(vocab)} IDs: not this package's; re-export the model")
            score_graph, used = _native_scorer(native), "native"
        elif engine == "native":
            why = ("a fusion student's fused score" if not logits else
                   f"no {native_weights_path(path).name} beside the package named by {meta_path.name} (exported "
                   f"before kdkit wrote one): re-export it with kdkit export")
            raise ValueError(f"{path}: the native engine cannot run it: {why}")
        det = cls(score, vocab, int(meta["window"]), int(meta["stride"]) if stride is None else stride,
                  thr if threshold is None else threshold, meta.get("label_threshold") or 0.0, channel, name=str(path),
                  score_batch=score_batch, score_graph=score_graph, engine=used, calibration=meta.get("calibration"))
        det.vehicle.family = (meta.get("model_config") or {}).get("kind")
        det.vehicle.source_checkpoint = meta.get("checkpoint")
        det.reading = meta.get("reading")
        det.warm_up()
        return det

    def warm_up(self) -> None:
        """Build and score one made-up window, so that the first real decision does not pay for
        loading the compiled graph builder (~1 s from numba's disk cache, longer the first time)
        and the package's first call. Called by :meth:`from_exported`; no stream state changes."""
        if self.score_graph is None:
            return
        n = self.window
        ids = np.asarray(self.vocab.ids[:3] if self.vocab.ids.size else [0x100], np.uint32)
        graph = window_graph(np.arange(n) * 1e-3, ids[np.arange(n) % ids.size], np.full(n, 8, np.uint8),
                             np.zeros((n, 8), np.uint8), None, self.vocab)
        self.score_graph(graph)

    @classmethod
    def load(cls, path: str | Path, threshold: float | None = None, stride: int | None = None,
             channel: str | None = None, engine: str = "auto") -> Detector:
        """:meth:`from_exported` for a ``.pt2``, else :meth:`from_checkpoint`."""
        make = cls.from_exported if Path(path).suffix == ".pt2" else cls.from_checkpoint
        return make(path, threshold=threshold, stride=stride, channel=channel, engine=engine)

    def clone(self) -> Detector:
        """A new detector with the same model and settings and no stream state. The once-only
        warnings (re-stamped timestamps, an unknown vehicle, a skipped channel) it shares with this
        detector: a bus warned about here is not warned about again there."""
        twin = Detector(self.score_windows, self.vocab, self.window, self.stride, self.threshold,
                        self.label_threshold, self.channel, self.name, self.score_batch, self.score_graph, self.engine,
                        self.batch_engine, self.calibration, self._shown)
        twin.vehicle.family, twin.vehicle.source_checkpoint = self.vehicle.family, self.vehicle.source_checkpoint
        twin.reading = self.reading
        return twin

    # ------------------------------------------------------------------ state
    @property
    def messages(self) -> int:
        """Messages accepted so far (frames not dropped)."""
        return self._base + self._n

    @property
    def restamped(self) -> bool:
        """True once the re-stamped-timestamps warning was given."""
        return self._restamp.warned

    @property
    def unknown_vehicle(self) -> bool | None:
        """True when the bus looks like a vehicle the model was not trained on (:class:`VehicleCheck`,
        warned once); None until enough windows were seen to judge."""
        return self.vehicle.verdict

    def stats(self) -> dict:
        """Counters: frames seen, messages accepted, windows, alarms, dropped frames by reason,
        frames of other channels left out by channel, frames held behind the last accepted one
        (:attr:`held_frames`)."""
        return {"frames": self.frames, "messages": self.messages, "windows": self.windows, "alarms": self.alarms,
                "dropped": dict(self.dropped), "other_channels": dict(self.other_channels),
                "held_frames": self.held_frames, "timeline_restarts": self.timeline_restarts,
                "restamped": self.restamped, "window": self.window,
                "stride": self.stride, "threshold": self.threshold, "engine": self.engine,
                "batch_engine": self.batch_engine, "unknown_vehicle": self.unknown_vehicle}

    def _drop(self, reason: str, detail: str) -> None:
        self.dropped[reason] += 1
        n = self.dropped[reason]
        if n <= LOGGED_PER_REASON:
            log.warning("%s: dropped %s (%s)%s", self.name, detail, DROP_REASONS[reason],
                        "; further ones are counted, not logged" if n == LOGGED_PER_REASON else "")

    def _other_channel(self, channel: str) -> None:
        self.other_channels[channel] += 1
        if f"channel:{channel}" not in self._shown:
            self._shown.add(f"channel:{channel}")
            log.warning("%s: frames of channel %r are left out (this detector reads channel %r); counted in "
                        "other_channels", self.name, channel, self.channel)

    # ------------------------------------------------------------------ feeding
    def feed(self, frame, arrival: float | None = None, label: int | None = None) -> Decision | None:
        """One frame; returns the decision of the window it closes, else None.

        ``frame``: a python-can ``can.Message`` or ``(timestamp, arbitration_id, data,
        is_extended)``. ``arrival``: its ``time.perf_counter()`` arrival time (default: now),
        from which the decision's latency is measured. A bad frame is dropped and counted.
        ``label``: the frame's attack label (1) or not (0) when the frames come from a labelled
        recording (a real-time replay): the decision of a window closed by a labelled frame carries
        ``attack_share``, as :meth:`feed_many` of a labelled table does.
        """
        arrival = time.perf_counter() if arrival is None else arrival
        cpu0 = time.thread_time()
        self.frames += 1
        try:
            ts, key, data, channel = _frame_fields(frame)
        except _Drop as d:
            self._drop(d.reason, d.detail)
            return None
        if self.channel is not None and channel is not None and channel != self.channel:
            self._other_channel(channel)
            return None
        if ts < self._last_ts:
            if self._glitch_before(ts):
                self._withdraw_last(ts)
            else:
                if self._spike_held(ts, self._held[-2][0] if len(self._held) > 1 else None):
                    _, h_key, *_ = self._held.pop()
                    self._pass_over_spike(format_can_id(h_key), self._behind_ts, ts, self._held[-1][0])
                if not self._behind_again(ts, self._last_ts, self.messages):
                    payload = np.zeros(8, np.uint8)
                    payload[:len(data)] = np.frombuffer(data, np.uint8)
                    self._hold(ts, key, len(data), payload, 1 if label else 0,
                               f"ID {format_can_id(key)} at {ts} after a frame at {self._last_ts}")
                    return None
                held = self._take_held()
                self._restart_windows(self._last_ts, held[0][0] if held else ts, kept=len(held))
                for h_ts, h_key, h_dlc, h_pl, h_lab, _ in held:  # the new timeline's first frames (fewer than a window)
                    if self._n == self._ts.shape[0]:
                        self._make_room(1)
                    n = self._n
                    self._ts[n], self._id[n], self._dlc[n], self._lab[n] = h_ts, h_key, h_dlc, h_lab
                    self._pl[n] = h_pl
                    self._n = n + 1
                    self._one.append(h_ts)
                self._last_ts = math.inf  # the restart frame is not withdrawn (becomes _prev_ts below)
        elif self._behind:  # back in order: no store per frame on the hot path otherwise
            self._behind = 0
            self._drop_held()
        self._prev_ts, self._last_ts = self._last_ts, ts
        if self._n == self._ts.shape[0]:
            self._make_room(1)
        n = self._n
        self._ts[n], self._id[n], self._dlc[n], self._lab[n] = ts, key, len(data), 1 if label else 0
        row = self._pl[n]
        row[:] = 0
        if data:
            row[:len(data)] = np.frombuffer(data, np.uint8)
        self._n = n + 1
        self._one.append(ts)
        if len(self._one) >= RESTAMP_SPAN:
            self._restamp.check(np.asarray(self._one))
            self._one.clear()
        if self.messages == self._next + self.window:
            if self.score_graph is not None:
                return self._close_one(arrival, cpu0, labelled=label is not None)
            return self._close(np.array([self._next]), arrival, cpu0, labelled=label is not None)[0]
        return None

    def feed_many(self, frames: Messages | Iterable, arrival: float | None = None,
                  labelled: bool | None = None) -> list[Decision]:
        """A batch: a :class:`~kdkit.data.readers.Messages` (vectorized end to end) or an
        iterable of frames as :meth:`feed` takes. Returns the decisions of every window the
        batch closes, in order. ``arrival``: the batch's ``time.perf_counter()`` arrival
        (default: now), for the decisions' latency. ``labelled``: the Messages' labels are
        real (default True for Messages; pass False for an unlabelled logger file): the
        decisions then carry ``attack_share``."""
        arrival = time.perf_counter() if arrival is None else arrival
        if isinstance(frames, Messages) and frames.restart is not None and frames.restart.any():
            return self._feed_timelines(frames, arrival, labelled)
        cpu0 = time.thread_time()
        restarts: list[tuple[int, float, float]] = []
        if isinstance(frames, Messages):
            (cols, restarts), labelled = self._check_messages(frames), labelled is not False
        else:
            (cols, restarts), labelled = self._collect(frames), False
        out: list[Decision] = []
        n = cols[0].shape[0]
        went_back = {at: (last, ts) for at, last, ts in restarts}
        bounds = sorted({0, *went_back, n})
        for a, b in zip(bounds[:-1], bounds[1:]):  # each timeline apart: its windows restart on its first frame
            if a in went_back:
                self._restart_windows(*went_back[a])
            for i in range(a, b, BLOCK_MESSAGES):
                out += self._append_block(*(c[i:min(b, i + BLOCK_MESSAGES)] for c in cols), arrival=arrival,
                                          cpu0=cpu0, labelled=labelled)
        return out

    def _feed_timelines(self, msgs: Messages, arrival: float, labelled: bool | None) -> list[Decision]:
        """A table whose reader found new timelines (``Messages.restart``: the recording's clock
        restarted): each is fed apart, its windows starting on its first message (no gap before
        it), as :func:`kdkit.data.graphs.build_graphs` builds them offline."""
        out: list[Decision] = []
        bounds = [0, *np.flatnonzero(msgs.restart).tolist(), len(msgs)]
        for a, b in zip(bounds[:-1], bounds[1:]):
            if a == b:
                continue
            if msgs.restart[a]:
                self.new_timeline(f"{msgs.source or 'a table'} message {a}")
            part = msgs.slice(a, b)
            part.restart = None
            out += self.feed_many(part, arrival, labelled)
        return out

    def new_timeline(self, where: str = "the next frame") -> None:
        """The next frame fed starts a new timeline that a reader found (``Messages.restart``: the
        recording's clock restarted): it is taken as it is, not dropped as behind the last frame
        (:meth:`feed` on its own needs :data:`RESTART_AFTER` such frames in a row, holding the ones
        before), and its first window starts on it, as :func:`kdkit.data.graphs.build_graphs` windows it
        offline. ``where``: what the warning names."""
        self.timeline_restarts += 1
        self._drop_held()  # behind the old timeline's last frame, and the reader's next timeline starts here
        self._last_ts, self._prev_ts, self._behind = -math.inf, math.inf, 0
        self._restart_windows(None, None, why=f"{where} starts a new timeline (its reader found the recording's "
                                              "clock restarted)")

    def _check_messages(self, msgs: Messages) -> tuple[tuple[np.ndarray, ...], list[tuple[int, float, float]]]:
        """The columns of ``msgs`` with bad rows dropped and counted (vectorized), and where the
        timeline restarts in them (as :meth:`_collect`). Time order is decided frame by frame, as
        :meth:`feed` does, from the first row out of order on (from the first row when frames are held
        behind the last accepted one: they come first, as if they were this table's)."""
        self.frames += len(msgs)
        ts, ids, dlc, payload, label = msgs.timestamp, msgs.can_id, msgs.dlc, msgs.payload, msgs.label
        finite = np.isfinite(ts)
        raw = ids & np.uint32(~EXTENDED_ID_FLAG & 0xFFFFFFFF)
        ext = (ids & np.uint32(EXTENDED_ID_FLAG)) != 0
        ok_id = np.where(ext, raw <= MAX_CAN_ID, raw <= MAX_STANDARD_ID)
        ok_dlc = dlc <= 8
        good = finite & ok_id & ok_dlc
        where = msgs.source or "messages"
        for mask, reason in ((~finite, "bad_timestamp"), (finite & ~ok_id, "bad_id"), (finite & ok_id & ~ok_dlc, "fd_frame")):
            for i in np.flatnonzero(mask)[:LOGGED_PER_REASON]:
                self._drop(reason, f"{where} message {int(i)} (ID {format_can_id(ids[i])}, timestamp {float(ts[i])!r})")
            extra = int(mask.sum()) - LOGGED_PER_REASON
            if extra > 0:
                self.dropped[reason] += extra
        restarts: list[tuple[int, float, float]] = []
        held: list[tuple[int, str]] = []
        if self._held:
            before, self._held = self._held, []
            ts = np.concatenate([np.array([h[0] for h in before]), ts])
            ids = np.concatenate([np.array([h[1] for h in before], np.uint32), ids])
            dlc = np.concatenate([np.array([h[2] for h in before], np.uint8), dlc])
            payload = np.concatenate([np.stack([h[3] for h in before]), payload])
            label = np.concatenate([np.array([h[4] for h in before], np.uint8), label])
            good = np.concatenate([np.ones(len(before), bool), good])
            keep, restarts, held = self._time_order(ts, ids, good, len(before), where, [h[5] for h in before])
        else:
            run_max = np.maximum.accumulate(np.concatenate([[self._last_ts], np.where(good, ts, -np.inf)]))[:-1]
            forward = ts >= run_max
            keep = good & forward
            if (good & ~forward).any():
                keep, restarts, held = self._time_order(ts, ids, good, int(np.argmin(forward | ~good)), where, [])
            elif good.any():
                g = ts[good]
                self._prev_ts, self._last_ts = (float(g[-2]) if g.size > 1 else self._last_ts), float(g[-1])
                self._behind = 0
        if held:  # behind the last accepted frame at the table's end: undecided, held for the frames after it
            self._held = [(float(ts[r]), int(ids[r]), int(dlc[r]), payload[r].copy(), int(label[r]), detail)
                          for r, detail in held]
        if keep.all():
            return (ts, ids, dlc, payload, label), restarts
        return (ts[keep], ids[keep], dlc[keep], payload[keep], label[keep]), restarts

    def _time_order(self, ts: np.ndarray, ids: np.ndarray, good: np.ndarray, first: int, where: str,
                    held_details: list[str]) -> tuple[np.ndarray, list[tuple[int, float, float]], list[tuple[int, str]]]:
        """:meth:`feed`'s time rule over a table's good rows from ``first`` (the first one behind)
        on, row by row: (rows kept, restart positions among them, the rows held at the end with what
        a drop of each says). With ``held_details``, the table's first rows are the frames held before
        it (``first`` = their number), with what a drop of each says."""
        keep = good.copy()
        n_held = len(held_details)
        if first and not n_held:
            before = ts[:first][good[:first]]
            if before.size:
                self._prev_ts = float(before[-2]) if before.size > 1 else self._last_ts
                self._last_ts, self._behind = float(before[-1]), 0
        last, prev = self._last_ts, self._prev_ts
        kept_at = int(good[:first].sum())  # kept rows before row i (the held ones counted while they are)
        last_row = int(np.flatnonzero(good[:first])[-1]) if kept_at and not n_held else -1  # the last kept row
        held_from = 0 if n_held else None  # the first row of the run held behind `last`, while there is one

        def detail(r: int) -> str:
            if r < n_held:
                return held_details[r]
            return (f"{where} message {r - n_held} (ID {format_can_id(ids[r])}, timestamp {float(ts[r])!r}) "
                    f"after a frame at {last!r}")

        def drop_held(upto: int) -> int:
            rows = np.flatnonzero(keep[held_from:upto]) + held_from
            for r in rows.tolist():
                self._drop("time_backwards", detail(r))
            keep[rows] = False
            return len(rows)

        held_kept_at = 0
        restarts: list[tuple[int, float, float]] = []
        for i in np.flatnonzero(good[first:]).tolist():
            i += first
            t = float(ts[i])
            if t < last:
                if last_row >= 0 and keep[last_row] and not self._behind and t >= prev:
                    self._drop("time_glitch", f"{where} message {last_row - n_held} (ID "
                                              f"{format_can_id(ids[last_row])}, timestamp {float(ts[last_row])!r}): "
                                              f"the next one is at {t!r}")
                    keep[last_row] = False
                    kept_at -= 1
                    last, prev = prev, math.inf
                elif last_row < 0 and self._glitch_before(t):  # the last frame of a batch before
                    self._withdraw_last(t)
                    last, prev = self._last_ts, self._prev_ts
                else:
                    if held_from is not None:
                        rows = np.flatnonzero(keep[held_from:i])
                        if rows.size > 1 and self._spike_held(t, float(ts[held_from + rows[-2]])):
                            r = held_from + int(rows[-1])
                            self._pass_over_spike(format_can_id(ids[r]), float(ts[r]), t, float(ts[held_from + rows[-2]]))
                            keep[r] = False
                            kept_at -= 1
                    if not self._behind_again(t, last, self.messages + kept_at):
                        if self._behind == 1 and held_from is not None:  # out of line with the held rows: they go
                            kept_at -= drop_held(i)
                            held_from = None
                        if held_from is None:
                            held_from, held_kept_at = i, kept_at
                        kept_at += 1  # held: kept while undecided
                        continue
                    # (where, from, to): applied once the windows before are decided
                    if held_from is not None:
                        restarts.append((held_kept_at, last, float(ts[held_from])))
                    else:
                        restarts.append((kept_at, last, t))
                    held_from = None
                    last = math.inf
            elif self._behind:
                self._behind = 0
                if held_from is not None:
                    kept_at -= drop_held(i)
                    held_from = None
            prev, last, last_row = last, t, i
            kept_at += 1
        held: list[tuple[int, str]] = []
        if held_from is not None:
            rows = (np.flatnonzero(keep[held_from:]) + held_from).tolist()
            held = [(r, detail(r)) for r in rows]
            keep[rows] = False
        self._last_ts, self._prev_ts = last, prev
        return keep, restarts, held

    def _collect(self, frames: Iterable) -> tuple[np.ndarray, ...]:
        """Columns of the good frames of an iterable (one Python step per frame)."""
        ts_l, id_l, dlc_l, pl = [], [], [], bytearray()
        last, prev = self._last_ts, self._prev_ts
        restarts = []  # positions where the frames' timeline went back and the windows restart after
        # the frames held behind the last accepted one (:meth:`_hold`) are the lists' tail from held_at on
        held_at, details = None, [h[5] for h in self._held]
        if self._held:
            held_at = 0
            for h_ts, h_key, h_dlc, h_pl, _, _ in self._held:
                ts_l.append(h_ts), id_l.append(h_key), dlc_l.append(h_dlc)
                pl += h_pl.tobytes()
            self._held = []

        def drop_tail() -> None:
            for detail in details:
                self._drop("time_backwards", detail)
            del ts_l[held_at:], id_l[held_at:], dlc_l[held_at:], pl[8 * held_at:]
            details.clear()

        for frame in frames:
            self.frames += 1
            try:
                ts, key, data, channel = _frame_fields(frame)
            except _Drop as d:
                self._drop(d.reason, d.detail)
                continue
            if self.channel is not None and channel is not None and channel != self.channel:
                self._other_channel(channel)
                continue
            if ts < last:
                if ts_l and not self._behind and ts >= prev:  # the frame before, of this batch, was a lone glitch
                    self._drop("time_glitch", f"ID {format_can_id(id_l[-1])} at {ts_l[-1]}: the frame after it is "
                                              f"at {ts}, the one before it at {prev}")
                    ts_l.pop(), id_l.pop(), dlc_l.pop()
                    del pl[-8:]
                    last, prev = prev, math.inf
                elif not ts_l and self._glitch_before(ts):  # ... of a batch before, still undecided
                    self._withdraw_last(ts)
                    last, prev = self._last_ts, self._prev_ts
                else:
                    if held_at is not None and len(ts_l) - held_at > 1 and self._spike_held(ts, ts_l[-2]):
                        self._pass_over_spike(format_can_id(id_l[-1]), ts_l[-1], ts, ts_l[-2])
                        ts_l.pop(), id_l.pop(), dlc_l.pop(), details.pop()
                        del pl[-8:]
                    if not self._behind_again(ts, last, self.messages + len(ts_l)):
                        if self._behind == 1 and held_at is not None:  # out of line with the held ones: they go
                            drop_tail()
                            held_at = None
                        if held_at is None:
                            held_at = len(ts_l)
                        details.append(f"ID {format_can_id(key)} at {ts} after a frame at {last}")
                        ts_l.append(ts), id_l.append(key), dlc_l.append(len(data))
                        pl += data.ljust(8, b"\0")
                        continue
                    at = len(ts_l) if held_at is None else held_at
                    restarts.append((at, last, ts_l[at] if held_at is not None else ts))  # applied once the windows before are decided
                    held_at = None
                    details.clear()
                    last = math.inf  # the restart frame is not withdrawn
            elif self._behind:
                self._behind = 0
                if held_at is not None:
                    drop_tail()
                    held_at = None
            prev, last = last, ts
            ts_l.append(ts)
            id_l.append(key)
            dlc_l.append(len(data))
            pl += data.ljust(8, b"\0")
        if held_at is not None:  # still undecided: held for the next frames
            tail = np.frombuffer(bytes(pl[8 * held_at:]), np.uint8).reshape(-1, 8)
            self._held = [(t, k, d, tail[j].copy(), 0, detail) for j, (t, k, d, detail) in
                          enumerate(zip(ts_l[held_at:], id_l[held_at:], dlc_l[held_at:], details))]
            del ts_l[held_at:], id_l[held_at:], dlc_l[held_at:], pl[8 * held_at:]
        n = len(ts_l)
        self._last_ts, self._prev_ts = last, prev
        return (np.asarray(ts_l, np.float64).reshape(n), np.asarray(id_l, np.uint32).reshape(n),
                np.asarray(dlc_l, np.uint8).reshape(n), np.frombuffer(bytes(pl), np.uint8).reshape(n, 8),
                np.zeros(n, np.uint8)), restarts

    def _hold(self, ts: float, key: int, dlc: int, payload: np.ndarray, label: int, detail: str) -> None:
        """Keep a frame behind the last accepted one (:meth:`_behind_again` said not yet) until the
        frames after it decide: the :data:`RESTART_AFTER`-th in a row confirms a restarted clock and the
        held frames start the new timeline (as a reader starts it on the first row behind); a frame in
        line with the old timeline shows them stamped in the past: they are dropped then (``detail``:
        what the drop says). A frame behind but before the held ones starts a run of its own."""
        if self._behind == 1:
            self._drop_held()
        self._held.append((ts, key, dlc, payload, label, detail))

    def _spike_held(self, ts: float, before: float | None) -> bool:
        """Whether the last frame held is a lone spike in the held run, shown by ``ts`` (the frame after
        it): later than ``ts``, which follows on from the held frame before it (``before``; None: it is
        the run's first). The readers pass such a row over inside a restarted clock's run and skip it
        alone (:func:`kdkit.data.readers._restart_run`); the run goes on from the frame before it."""
        return before is not None and self._behind > 1 and ts < self._behind_ts and ts >= before

    def _pass_over_spike(self, key: str, spike: float, ts: float, before: float) -> None:
        """Drop the spike :meth:`_spike_held` found (``time_glitch``); the run goes on from ``before``."""
        self._drop("time_glitch", f"ID {key} at {spike}: the frame after it is at {ts}, the one before it at {before} "
                                  "(among frames behind the last accepted one)")
        self._behind -= 1
        self._behind_ts = before

    def _take_held(self) -> list[tuple[float, int, int, np.ndarray, int, str]]:
        if len(self._held) >= self.window:  # a window of fewer messages than the run (window < RESTART_AFTER):
            self._drop_held()  # feed decides one window per frame, so they go as before
        held, self._held = self._held, []
        return held

    def _drop_held(self) -> None:
        """The held frames were stamped in the past (a frame in line with the old timeline came): dropped."""
        for *_, detail in self._held:
            self._drop("time_backwards", detail)
        self._held = []

    @property
    def held_frames(self) -> int:
        """Frames behind the last accepted one, held until the frames after them show whether the
        clock restarted (:meth:`_hold`): in neither ``messages`` nor ``dropped`` yet."""
        return len(self._held)

    def end(self) -> None:
        """The frames ended: frames still held behind the last accepted one (fewer than
        :data:`RESTART_AFTER` in a row, so no restart) are dropped and counted (``time_backwards``)."""
        self._behind = 0
        self._drop_held()

    def _glitch_before(self, ts: float) -> bool:
        """Whether a frame at ``ts``, behind the last accepted one, shows that one a lone glitch that
        can still be withdrawn: ``ts`` follows on from the frames before it (the readers' rule for a
        file's rows, :class:`kdkit.data.readers._TimeOrder`), no frame is behind already, and no
        decided window holds it (it closed none)."""
        return (not self._behind and ts >= self._prev_ts and self._n > 0
                and self.messages - 1 > self._decided_to)

    def _withdraw_last(self, ts: float) -> None:
        """Drop the last accepted frame (buffered, in no decided window) as a glitch revealed by ``ts``."""
        self._n -= 1
        glitch, key = float(self._ts[self._n]), int(self._id[self._n])
        if self._one and self._one[-1] == glitch:
            self._one.pop()
        self._drop("time_glitch", f"ID {format_can_id(key)} at {glitch}: the frame after it is at {ts}, "
                                  f"the one before it at {self._prev_ts}")
        self._last_ts, self._prev_ts = self._prev_ts, math.inf

    def _behind_again(self, ts: float, last: float, at: int) -> bool:
        """A frame behind the last accepted one (at ``last``): True when it is the :data:`RESTART_AFTER`-th
        in a row behind it and in order with the ones before it; the caller then takes the frames' new
        timeline from the first of them on (:meth:`_restart_windows` when the windows before it are
        decided). Else the caller holds it (:meth:`_hold`)."""
        self._behind = self._behind + 1 if self._behind and ts >= self._behind_ts else 1
        self._behind_ts = ts
        if self._behind < RESTART_AFTER:
            return False
        self._behind = 0
        return True

    def _restart_windows(self, last: float | None, ts: float | None, why: str = "", kept: int = RESTART_AFTER - 1) -> None:
        """The windows restart on the next message fed (the first frame of the new timeline, a timeline's
        first row a reader marked, the first frame after a stall), with no gap before it, as
        :func:`kdkit.data.graphs.build_graphs` windows a new timeline. The open window's messages are left
        undecided: counted (``undecided``) and said, once per restart, with what went back (``last`` ->
        ``ts``, the new timeline's first frame; ``kept`` frames held before the one that confirmed it) or
        ``why``."""
        left = self.open_messages
        self.undecided += left
        self.between += self._trailing_gap
        if last is not None:
            self.timeline_restarts += 1
            log.warning("%s: the frames' time went back %.6g s (from %r to %r) and stayed there for %d frames: a "
                        "frame stamped in the future, or the clock stepped back; the windows restart on the new "
                        "timeline, from its first frame (%s; the open window's %d messages are not decided)",
                        self.name, last - ts, last, ts, RESTART_AFTER,
                        f"the {kept} frames before the one that confirmed it were held, not dropped" if kept else
                        "the frames before the one that confirmed it were dropped: a window shorter than them", left)
        elif why:
            log.warning("%s: %s: the windows restart (the open window's %d messages are not decided)", self.name, why,
                        left)
        self._next = self._timeline_start = self.messages
        self._one.clear()  # the re-stamping check measures spacing on one timeline
        self._restamp.restart()

    @property
    def open_messages(self) -> int:
        """Messages fed since the next window's start (on this timeline): in no decided window yet."""
        return max(self.messages - max(self._decided_to + 1, self._next, self._timeline_start), 0)

    @property
    def between_windows(self) -> int:
        """Messages in no window because the stride is longer than the window (the gaps so far)."""
        return self.between + self._trailing_gap

    @property
    def _trailing_gap(self) -> int:
        """The gap after the last decided window fed so far (a stride longer than the window)."""
        return max(min(self._next, self.messages) - max(self._decided_to + 1, self._timeline_start), 0)

    def stalled(self, seconds: float) -> None:
        """The bus carried no frame for ``seconds``: a window must not span the silence, so the windows
        restart with the next frame (no gap before it); the open window's messages are counted undecided."""
        self._restart_windows(None, None, why=f"no frame for {seconds:.1f} s")

    def _make_room(self, extra: int) -> None:
        """Drop buffered rows no future window needs; grow the buffer if that is not enough."""
        keep = max(min(self._next - 1, self.messages), 0) - self._base  # the next window's preceding message on
        if keep > 0:
            for a in (self._ts, self._id, self._dlc, self._pl, self._lab):
                a[:self._n - keep] = a[keep:self._n]
            self._n -= keep
            self._base += keep
        need = self._n + extra
        if need > self._ts.shape[0]:
            cap = max(need, 2 * self._ts.shape[0])
            for name in ("_ts", "_id", "_dlc", "_pl", "_lab"):
                old = getattr(self, name)
                new = np.zeros((cap, *old.shape[1:]), old.dtype)
                new[:self._n] = old[:self._n]
                setattr(self, name, new)

    def _append_block(self, ts, ids, dlc, payload, label, arrival: float, cpu0: float,
                      labelled: bool) -> list[Decision]:
        if ts.size == 0:
            return []
        self._restamp.check(ts)
        self._make_room(ts.shape[0])
        n, m = self._n, ts.shape[0]
        self._ts[n:n + m], self._id[n:n + m], self._dlc[n:n + m] = ts, ids, dlc
        self._pl[n:n + m], self._lab[n:n + m] = payload, label
        self._n = n + m
        last_start = self.messages - self.window
        if last_start < self._next:
            return []
        return self._close(np.arange(self._next, last_start + 1, self.stride), arrival, cpu0, labelled)

    def _close_one(self, arrival: float, cpu0: float, labelled: bool = False) -> Decision:
        """Build, score and decide the next window, which the last fed frame closed (``labelled``: its
        messages' labels are real, the decision carries their attack share, as build_graphs computes it)."""
        start, W = self._next, self.window
        r = start - self._base
        prev = float(self._ts[r - 1]) if start > self._timeline_start else None
        graph = window_graph(self._ts[r:r + W], self._id[r:r + W], self._dlc[r:r + W], self._pl[r:r + W], prev,
                             self.vocab)
        score = self.score_graph(graph)
        attack = bool(is_attack(score, self.threshold))
        oov = tuple(k for k, v in zip(graph.can_id.tolist(), graph.node_id.tolist()) if v == 0)
        latency, cpu = time.perf_counter() - arrival, time.thread_time() - cpu0
        if self.vehicle.verdict is None:
            self.vehicle.add(np.array([graph.node_id.shape[0]]), np.array([len(oov)]), [oov])
        share = float(np.float32(self._lab[r:r + W].mean(dtype=np.float64))) if labelled else None
        out = Decision(self.windows, start, float(self._ts[r]), float(self._ts[r + W - 1]), W, score, self.threshold,
                       attack, oov, latency, share, cpu)
        self.windows += 1
        self.alarms += attack
        self.between += max(start - max(self._decided_to + 1, self._timeline_start), 0)
        self._next = start + self.stride
        self._decided_to = start + W - 1
        return out

    def _close(self, starts: np.ndarray, arrival: float, cpu0: float, labelled: bool) -> list[Decision]:
        """Build, score and decide the windows starting at stream indices ``starts``."""
        # the first window's preceding message (none at the start, or on a timeline's first message)
        lo = max(int(starts[0]) - 1, self._timeline_start) - self._base
        hi = self._n
        msgs = Messages(self._ts[lo:hi], self._id[lo:hi], self._dlc[lo:hi], self._pl[lo:hi], self._lab[lo:hi],
                        source=self.name)
        rel = starts - (self._base + lo)
        gs = build_graphs(msgs, self.vocab, self.window, self.stride, self.label_threshold, starts=rel)
        scores = np.asarray(self.score_windows(gs), dtype=np.float64).reshape(-1)
        if scores.shape[0] != len(gs):
            raise RuntimeError(f"{self.name}: scored {scores.shape[0]} windows, expected {len(gs)}")
        attack = is_attack(scores, self.threshold)
        oov_ids: list[tuple[int, ...]] = [()] * len(gs)
        oov = np.flatnonzero(gs.node_id.numpy() == 0)
        node_ptr = gs.node_ptr.numpy()
        graph_of = np.searchsorted(node_ptr[1:], oov, side="right")
        if oov.size:  # nodes are stored graph by graph: each graph's OOV nodes are one run
            can = gs.can_id.numpy()[oov].tolist()
            bounds = np.searchsorted(graph_of, np.arange(len(gs) + 1)).tolist()
            for g in np.unique(graph_of).tolist():
                oov_ids[g] = tuple(can[bounds[g]:bounds[g + 1]])
        if self.vehicle.verdict is None:
            self.vehicle.add(np.diff(node_ptr), np.bincount(graph_of, minlength=len(gs)), oov_ids)
        ts = msgs.timestamp
        t0, t1 = ts[rel].tolist(), ts[rel + self.window - 1].tolist()
        share = gs.attack_share.numpy().tolist() if labelled else [None] * len(gs)
        latency, cpu = time.perf_counter() - arrival, time.thread_time() - cpu0
        first, first_msg, score_l, attack_l = self.windows, starts.tolist(), scores.tolist(), attack.tolist()
        out = [Decision(first + k, first_msg[k], t0[k], t1[k], self.window, score_l[k], self.threshold, attack_l[k],
                        oov_ids[k], latency, share[k], cpu) for k in range(len(gs))]
        self.windows += len(out)
        self.alarms += int(attack.sum())
        self.between += max(int(starts[0]) - max(self._decided_to + 1, self._timeline_start), 0) + int(
            np.maximum(np.diff(starts) - self.window, 0).sum())
        self._next = int(starts[-1]) + self.stride
        self._decided_to = int(starts[-1]) + self.window - 1
        return out


def _graph_scorer(program, logits: bool) -> Callable[[WindowGraph], float] | None:
    """``score(graph) -> float`` for one window through an exported package's direct call
    (``program.run``, :func:`kdkit.deploy.export.package_runner`): the graph's arrays go in as
    tensors without a batch object, the per-size inputs (``batch``, ``ptr``, ``node_slots``) are
    made once per node count, and a GAT's two logits become the attack probability in plain
    Python (``softmax(logits)[1]`` in float64; the batch path's float32 softmax differs by float
    rounding). None when the program has no direct call."""
    run = getattr(program, "run", None)
    if run is None:
        return None
    from_numpy, fixed_inputs = torch.from_numpy, {}

    def score(graph: WindowGraph) -> float:
        n = graph.x.shape[0]
        fixed = fixed_inputs.get(n)
        if fixed is None:
            fixed = fixed_inputs[n] = (torch.zeros(n, dtype=torch.long), torch.tensor([0, n]), torch.empty(n, 0))
        out = run(from_numpy(graph.x), from_numpy(graph.node_id), from_numpy(graph.edge_index),
                  from_numpy(graph.edge_attr), *fixed).tolist()[0]
        return _attack_probability(out[0], out[1]) if logits else float(out)

    return score


def _attack_probability(l0: float, l1: float) -> float:
    """``softmax([l0, l1])[1]`` in float64, in the form that cannot overflow."""
    d = l0 - l1  # softmax(l)[1] = 1 / (1 + exp(l0 - l1))
    if d > 0:
        e = math.exp(-d)
        return e / (1.0 + e)
    return 1.0 / (1.0 + math.exp(d))


def _native_scorer(native: NativeGAT) -> Callable[[WindowGraph], float]:
    """``score(graph) -> float``, a GAT's attack probability for one window from the native engine."""
    def score(graph: WindowGraph) -> float:
        out = native.logits_window(graph.x, graph.node_id, graph.edge_index, graph.edge_attr)
        return _attack_probability(float(out[0]), float(out[1]))

    return score


_NPZ_MISSING_WARNED: set[str] = set()  # packages whose missing .npz was warned about in this process


def _native_weights(package: Path, meta: dict, meta_path: Path, engine: str = "auto") -> NativeGAT | None:
    """The native weights beside an exported package when its metadata names them and their
    SHA-256 matches (a ``.npz`` left from another export must not score this package's windows);
    None when there are none to use.

    A ``.npz`` the metadata names but that is not there (the package and its ``.json`` copied
    without it) is an error for ``engine="native"`` and is warned about once per package and
    process otherwise: single windows then run the slower package. An export that never had one
    (kdkit before it wrote the ``.npz``) names none: None, silently."""
    path = native_weights_path(package)
    if not path.is_file():
        if not meta.get("native_weights"):
            return None
        if engine == "native":
            raise ValueError(f"{package}: the native engine cannot run it: {path.name} is missing at {path} "
                             f"({meta_path.name} records native weights, exported as {meta['native_weights']}): copy "
                             f"the three files of one export ({package.name}, {meta_path.name}, {path.name}) together, "
                             f"or re-export it with kdkit export")
        if str(package) not in _NPZ_MISSING_WARNED:
            _NPZ_MISSING_WARNED.add(str(package))
            log.warning("%s: %s is missing at %s (%s records native weights, exported as %s): single windows (live, "
                        "--realtime) run on the slower package engine instead of the native single-window engine. A "
                        "gateway needs the three files of one export together (%s, %s, %s): copy it beside the package, "
                        "or re-export the model with kdkit export. This warning is shown once.", package, path.name, path,
                        meta_path.name, meta["native_weights"], package.name, meta_path.name, path.name)
        return None
    if not meta.get("native_weights_sha256"):
        log.warning("%s: %s is not named by %s (another export's?): ignored, single windows run the package; "
                    "re-export the model to use the native engine", package, path.name, meta_path.name)
        return None
    digest = file_sha256(path)
    if digest != meta["native_weights_sha256"] and meta.get("native_weights") != path.name:
        # (one export's three files renamed together keep their contents: the digest, not the name, says whose)
        log.warning("%s: %s is not the one exported with it (its SHA-256 is not the one %s records; another "
                    "export's?): ignored, single windows run the package; re-export the model to use the native "
                    "engine", package, path.name, meta_path.name)
        return None
    if digest != meta["native_weights_sha256"]:
        raise ValueError(f"{path} is not the one exported with {package} (SHA-256 {digest[:12]}..., {meta_path.name} "
                         f"records {meta['native_weights_sha256'][:12]}...): copy the three files of one export "
                         f"together, or re-export the model")
    with np.load(path) as arrays:
        return NativeGAT.from_arrays(arrays)


def _check_engine(engine: str, flag: str, where) -> None:
    """``engine`` must be one of the engines of the model kind ``flag`` names (:data:`MODEL_ENGINES`)."""
    allowed = MODEL_ENGINES[flag]
    if engine not in allowed:
        kind = "a checkpoint" if flag == "--checkpoint" else "an exported model (.pt2)"
        other = "--model" if flag == "--checkpoint" else "--checkpoint"
        runs = (f"; {engine!r} is for {'a checkpoint' if other == '--checkpoint' else 'an exported model'} ({other})"
                if engine in MODEL_ENGINES[other] else "")
        raise ValueError(f"{where}: engine={engine!r}; {kind} runs on {', '.join(allowed)}{runs}")


def _check_layout(node_features, edge_features, graph_format, where, vocab=None) -> None:
    """The model must read this kdkit's graphs: same feature layout and a compatible graph format."""
    if not layout_matches(node_features, edge_features, graph_format, vocab):
        raise ValueError(f"{where} was built for another graph layout (graph format {graph_format or 'unknown'}, this "
                         f"kdkit builds {GRAPH_FORMAT_VERSION}, or other node/edge features): retrain or re-export it")


def _check_stride(stride, where) -> None:
    """A stride (messages between window starts) must be a whole number >= 1."""
    whole = isinstance(stride, (int, np.integer)) or (isinstance(stride, (float, np.floating)) and math.isfinite(stride)
                                                       and float(stride).is_integer())
    if isinstance(stride, bool) or not whole or stride < 1:
        raise ValueError(f"{where}: --stride {stride!r}: the messages between window starts must be a whole number "
                         f">= 1 (leave --stride out for the model's own)")


def _check_threshold(threshold, probability: bool, where) -> None:
    """A threshold must be a finite number, and within [0, 1] for a model whose score is an attack
    probability (a GAT classifier): outside it every window or none would alarm."""
    try:
        value = float(threshold)
    except (TypeError, ValueError):
        raise ValueError(f"{where}: --threshold {threshold!r} is not a number") from None
    if not math.isfinite(value):
        raise ValueError(f"{where}: --threshold {threshold!r} is not a finite number")
    if probability and not 0.0 <= value <= 1.0:
        raise ValueError(f"{where}: --threshold {threshold!r} is outside [0, 1]: this model's score is an attack "
                         f"probability, so {'no window' if value > 1 else 'every window'} would alarm; leave "
                         f"--threshold out for the model's own")
