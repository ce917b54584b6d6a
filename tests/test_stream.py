"""Live detection (kdkit.stream, ``kdkit detect``, ``kdkit bench detect``): a python-can virtual
bus end to end, streaming scores equal to the offline ones (checkpoint and exported student),
sliding windows, re-stamped timestamps, malformed frames, stalls, a lost connection, Ctrl-C,
and the shared real RAV4 candump log replayed with ``--channel``.

Run: .venv/bin/python -m pytest tests/test_stream.py -q
"""
from __future__ import annotations

import json
import logging
import math
import threading
from pathlib import Path

import can
import numpy as np
import pytest
import torch
from conftest import require

from kdkit.cli.main import main
from kdkit.data import graphs
from kdkit.data.graphs import IdVocab, build_graphs
from kdkit.data.readers import EXTENDED_ID_FLAG, Messages, read_messages
from kdkit.reporting.metrics import evaluate_model, predict_scores
from kdkit.stream import Detector, listen_bus, open_bus, replay_file
from kdkit.stream import run as stream_run
from kdkit.stream.run import BusError, as_can_messages
from kdkit.training.checkpoint import load_checkpoint, model_from_checkpoint
from kdkit.workflows.run import checkpoint_data

REAL_CANDUMP = Path(__file__).resolve().parents[2] / "shared" / "data" / "candump" / "toyota-rav4-2018-highway.candump.log.gz"
SCENARIO = "test_01_known_vehicle_known_attack"


@pytest.fixture(scope="module")
def trained(kdkit_env, tmp_path_factory):
    """A GAT student (preset size) trained 2 epochs on the synthetic data: it flags the known
    vehicle's DoS bursts and nothing before them."""
    from kdkit.config import make_config
    from kdkit.workflows import train

    torch.set_num_threads(1)
    runs = tmp_path_factory.mktemp("stream_runs")
    cfg = make_config(model="gat", type="student", dataset="synthetic", epochs=2, precision="32-true",
                      accelerator="cpu", num_workers=0, runs_dir=str(runs), run_name="student", save_compat=False)
    return Path(train(cfg, progress=False)["best_checkpoint"])


@pytest.fixture(scope="module")
def recording(kdkit_env, trained) -> Path:
    """The known vehicle's DoS test recording (attack bursts from window 33 on)."""
    from kdkit.data.simulate import default_synthetic_root

    return default_synthetic_root(0) / SCENARIO / "DoS-bravo.csv"


@pytest.fixture(scope="module")
def offline(trained):
    """``scores(messages, stride)`` of the offline path: build_graphs over the whole recording,
    predict_scores (what kdkit evaluate runs)."""
    ckpt = load_checkpoint(trained)
    model = model_from_checkpoint(ckpt).eval()
    vocab = IdVocab.from_list(ckpt["vocab"])

    def scores(msgs, stride=100):
        return predict_scores(model, build_graphs(msgs, vocab, 100, stride))

    return scores


def _scores(decisions) -> np.ndarray:
    return np.array([d.score for d in decisions])


def _frames(msgs, n=None):
    """(timestamp, id, data, is_extended) tuples of a recording's first ``n`` messages."""
    raw = msgs.can_id & np.uint32(~EXTENDED_ID_FLAG & 0xFFFFFFFF)
    ext = (msgs.can_id & np.uint32(EXTENDED_ID_FLAG)) != 0
    return [(float(msgs.timestamp[i]), int(raw[i]), msgs.payload[i, :msgs.dlc[i]].tobytes(), bool(ext[i]))
            for i in range(len(msgs) if n is None else n)]


# ----------------------------------------------------------------------------- equality with offline scoring
def test_streaming_scores_equal_kdkit_evaluate(trained, recording):
    """The detector over the replayed file scores every window as kdkit evaluate does (its
    scenario's windows of this file), fed as one batch, in odd-sized batches, or frame by frame."""
    ckpt = load_checkpoint(trained)
    data = checkpoint_data(ckpt)  # the graphs kdkit evaluate builds, with the checkpoint's settings
    gs = data.splits[SCENARIO]
    model = model_from_checkpoint(ckpt).eval()
    reference = evaluate_model(model, data.splits, float(ckpt["threshold"]), scenarios=[SCENARIO])["scores"][SCENARIO]
    mine = gs.file_index.numpy() == [Path(f).name for f in gs.files].index(recording.name)
    reference = reference[mine]

    msgs = read_messages(recording)
    det = Detector.from_checkpoint(trained)
    batch = det.feed_many(msgs)
    assert len(batch) == len(reference) == len(msgs) // 100 and det.windows == len(batch)
    np.testing.assert_allclose(_scores(batch), reference, rtol=0, atol=1e-6)
    assert [d.is_attack for d in batch] == (reference >= 0.5).tolist()
    assert [d.first_message for d in batch] == list(range(0, 100 * len(batch), 100))
    assert batch[3].start_time == msgs.timestamp[300] and batch[3].end_time == msgs.timestamp[399]
    assert [d.attack_share for d in batch] == pytest.approx(gs.attack_share.numpy()[mine].tolist())

    parts, one = det.clone(), det.clone()
    got = []
    for a, b in ((0, 1), (1, 37), (37, 5000), (5000, 5099), (5099, len(msgs))):
        got += parts.feed_many(msgs.slice(a, b))
    np.testing.assert_allclose(_scores(got), reference, rtol=0, atol=1e-6)
    frames = _frames(msgs, 3000)
    single = [d for d in map(one.feed, frames) if d is not None]
    assert len(single) == 30 and all(d.attack_share is None and d.latency_s >= 0 for d in single)
    np.testing.assert_allclose(_scores(single), reference[:30], rtol=0, atol=1e-6)
    assert det.dropped == {} and not det.restamped


@pytest.mark.parametrize("stride", [30, 170])
def test_sliding_and_gapped_windows_equal_offline(trained, recording, offline, stride):
    msgs = read_messages(recording).slice(0, 4000)
    det = Detector.from_checkpoint(trained, stride=stride)
    assert (det.window, det.stride) == (100, stride)
    got = det.feed_many(msgs.slice(0, 1234)) + det.feed_many(_frames(msgs.slice(1234, 2000)))
    got += [d for d in map(det.feed, _frames(msgs.slice(2000, 4000))) if d is not None]
    ref = offline(msgs, stride)
    assert [d.first_message for d in got] == list(range(0, 4000 - 99, stride))
    np.testing.assert_allclose(_scores(got), ref, rtol=0, atol=1e-6)


@pytest.fixture(scope="module")
def exported(trained, tmp_path_factory):
    """The student exported once per module (AOT compilation takes ~30 s on 2 cores)."""
    from kdkit.deploy.export import export_checkpoint

    out = tmp_path_factory.mktemp("stream_export") / "student.pt2"
    export_checkpoint(trained, out)
    return out


def test_the_unknown_car_advice_of_an_export_is_a_command_that_runs(exported, trained):
    """A new user ran the advice "then kdkit export car.pt" of a .pt2's unknown-car warning: export
    needs --checkpoint and --out, and the checkpoint the package came from is in its metadata."""
    from kdkit.stream.detector import VehicleCheck

    det = Detector.from_exported(exported, channel="can0")
    assert det.vehicle.source_checkpoint == str(trained) and det.clone().vehicle.source_checkpoint == str(trained)
    assert det.vehicle._calibrate_command() == (
        f"kdkit calibrate --checkpoint {trained} --clean CLEAN_CAPTURE --channel can0 --fpr 0.01 --out car.pt (the "
        f"checkpoint student.pt2 was exported from), then kdkit export --checkpoint car.pt --out "
        f"{exported.with_name('student_car.pt2')}")
    bare = VehicleCheck("student.pt2")  # an export without its metadata's checkpoint: a placeholder
    assert bare._calibrate_command().startswith("kdkit calibrate --checkpoint BEST.pt --clean CLEAN_CAPTURE --fpr")


def test_exported_student_streams_the_offline_scores(exported, trained, recording, offline):
    from kdkit.data.loader import gather_windows
    from kdkit.deploy.export import load_exported

    msgs = read_messages(recording)
    det = Detector.from_exported(exported)
    meta = json.loads(exported.with_suffix(".json").read_text())
    assert (det.window, det.stride, det.threshold) == (meta["window"], meta["stride"], meta["threshold"])
    got = det.feed_many(msgs)
    gs = build_graphs(msgs, IdVocab.from_list(meta["vocab"]), meta["window"], meta["stride"])
    with torch.no_grad():  # the README's gateway path over the whole file
        ref = load_exported(exported)(gather_windows(gs, np.arange(len(gs)))).softmax(-1)[:, 1].numpy()
    np.testing.assert_allclose(_scores(got), ref, rtol=0, atol=1e-5)
    np.testing.assert_allclose(_scores(got), offline(msgs), rtol=0, atol=1e-4)  # = the checkpoint's model
    single = [d for d in map(det.clone().feed, _frames(msgs, 1500)) if d is not None]
    np.testing.assert_allclose(_scores(single), ref[:15], rtol=0, atol=1e-5)
    assert main(["detect", "--model", str(exported), "--input", str(recording), "--all-decisions",
                 "--alarms", str(exported.parent / "all.jsonl")]) == 0
    lines = [json.loads(x) for x in (exported.parent / "all.jsonl").read_text().splitlines()]
    np.testing.assert_allclose([x["score"] for x in lines], ref, rtol=0, atol=1e-5)


# ----------------------------------------------------------------------------- a python-can virtual bus
def _send(channel: str, frames, preserve_timestamps: bool = True) -> threading.Thread:
    """Send ``frames`` (can.Message) on virtual bus ``channel`` from a thread, as fast as possible."""
    def run():
        with can.Bus(interface="virtual", channel=channel, preserve_timestamps=preserve_timestamps) as tx:
            for frame in frames:
                tx.send(frame)

    return threading.Thread(target=run, daemon=True)


def test_virtual_bus_end_to_end_alarms_where_the_attack_is(trained, recording, offline):
    msgs = read_messages(recording).slice(0, 8000)  # the first DoS burst starts in window 33
    first_attack = int(np.flatnonzero(msgs.label)[0])
    det = Detector.from_checkpoint(trained)
    with open_bus("virtual:kdkit-test-e2e") as rx:
        sender = _send("kdkit-test-e2e", list(as_can_messages(msgs)))
        sender.start()
        summary = listen_bus(det, rx, max_messages=len(msgs), max_seconds=60, keep=True)
        sender.join(10)
    assert summary.stopped_by == "max-messages" and summary.error is None
    decisions = summary.decisions
    assert len(decisions) == 80 and det.messages == 8000 and not det.restamped
    np.testing.assert_allclose(_scores(decisions), offline(msgs), rtol=0, atol=1e-6)
    alarms = [d for d in decisions if d.is_attack]
    assert alarms, "no alarm on the DoS bursts"
    assert all(d.first_message + 99 >= first_attack for d in alarms)  # none before the attack
    truth = msgs.label.reshape(80, 100).any(axis=1)
    assert all(truth[d.window] for d in alarms)  # every alarm is on an attack window
    s = summary.to_dict()
    assert s["windows"] == 80 and s["alarms"] == len(alarms) and s["latency_ms_p50"] > 0
    assert s["latency_ms_p50"] <= s["latency_ms_p99"] <= s["latency_ms_max"]


def test_restamping_source_is_warned_once(trained, recording, caplog):
    """python-can's virtual bus without preserve_timestamps stamps every frame with its send time:
    sent unpaced, the frames come microseconds apart. Warned once, with the fix."""
    msgs = read_messages(recording).slice(0, 1500)
    det = Detector.from_checkpoint(trained)
    with caplog.at_level(logging.WARNING, logger="kdkit.stream"), open_bus("virtual:kdkit-test-restamp") as rx:
        sender = _send("kdkit-test-restamp", list(as_can_messages(msgs)), preserve_timestamps=False)
        # all frames sent (and stamped) before the detector reads them: stamped while the receiving
        # thread scored windows, the send times on a loaded 2-core CI machine came further apart
        # than a CAN bus allows and the re-stamping went unnoticed (the warning needs fast frames)
        sender.start()
        sender.join(30)
        summary = listen_bus(det, rx, max_messages=len(msgs), max_seconds=60)
    warned = [r.getMessage() for r in caplog.records if "preserve_timestamps=True" in r.getMessage()]
    assert len(warned) == 1 and det.restamped and summary.to_dict()["restamped"]
    assert "faster than a CAN bus" in warned[0] and "wall clock" in warned[0] and "--realtime" in warned[0]

    caplog.clear()  # the recorded timestamps of the same frames: no warning
    quiet = Detector.from_checkpoint(trained)
    quiet.feed_many(msgs)
    assert not quiet.restamped and not [r for r in caplog.records if "preserve_timestamps" in r.getMessage()]
    stamped = Detector.from_checkpoint(trained)  # all frames at one time (tuples built with timestamp 0)
    stamped.feed_many([(0.0, 0x100, b"\x01", False)] * 600)
    assert stamped.restamped and stamped.windows == 6


def test_a_bus_of_unknown_ids_is_warned_once_and_decisions_stay(trained, recording, caplog):
    """A car whose IDs the model never saw (here: the known car's traffic with every ID made an
    extended one) is judged after 100 windows and warned about once, frame by frame and in
    blocks; the known car is not; the decisions are the model's either way."""
    msgs = read_messages(recording)
    known = Detector.from_checkpoint(trained)
    with caplog.at_level(logging.WARNING, logger="kdkit.stream"):
        ref = known.feed_many(msgs)
    assert len(ref) == known.windows >= 100  # enough windows to judge
    assert known.unknown_vehicle is False and known.vehicle.share_of_windows == 0.0
    assert not [r for r in caplog.records if "does not look like a vehicle" in r.getMessage()]

    foreign = [(t, i, d, True) for t, i, d, _ in _frames(msgs, 12_000)]  # 120 windows of foreign IDs
    det = Detector.from_checkpoint(trained)
    assert det.score_graph is not None  # frame by frame: the single-window path
    decisions = [d for d in (det.feed(f) for f in foreign) if d is not None]
    assert len(decisions) == 120 and det.unknown_vehicle is True and det.vehicle.share_of_windows == 1.0
    warned = [r.getMessage() for r in caplog.records if "does not look like a vehicle" in r.getMessage()]
    assert len(warned) == 1 and "kdkit calibrate" in warned[0] and "first 100 windows" in warned[0]
    # the command for this very model, and no fusion remark for a GAT (a new user ran a GAT .pt2 and read it)
    assert f"kdkit calibrate --checkpoint {trained} --clean CLEAN_CAPTURE --fpr 0.01" in warned[0]
    assert "fusion" not in warned[0] and det.vehicle.family == "gat" and det.clone().vehicle.family == "gat"
    on_bus = Detector.from_checkpoint(trained, channel="can0")
    on_bus.vehicle.family = "fusion"
    assert "--clean CLEAN_CAPTURE --channel can0" in on_bus.vehicle._calibrate_command()
    assert det.stats()["unknown_vehicle"] is True
    blocks = Detector.from_checkpoint(trained)
    assert blocks.unknown_vehicle is None
    blocks.feed_many(foreign[:9_900])
    assert blocks.unknown_vehicle is None  # 99 windows: not judged yet
    blocks.feed_many(foreign[9_900:])
    assert blocks.unknown_vehicle is True
    assert len([r for r in caplog.records if "does not look like a vehicle" in r.getMessage()]) == 2  # once each
    np.testing.assert_allclose(_scores(decisions), _scores(Detector.from_checkpoint(trained).feed_many(foreign)),
                               rtol=0, atol=1e-6)  # the verdict changes no decision


def test_vehicle_check_tells_a_foreign_car_from_an_attack_with_new_ids(caplog):
    """Fuzzing fills some windows with unknown IDs, a DoS adds one; only a bus whose windows are
    mostly unknown in at least 75 % of the first 100 counts as another vehicle."""
    from kdkit.stream.detector import VehicleCheck

    def judge(unknown_per_window):
        check = VehicleCheck("m")
        unknown = np.asarray(unknown_per_window)
        check.add(np.full(unknown.size, 30), unknown, [(0x7A0,)] * unknown.size)
        return check.verdict, check.share_of_windows

    assert judge([0] * 100) == (False, 0.0)
    assert judge([1] * 100) == (False, 0.0)  # a DoS on one new ID in every window
    assert judge([20, 0] * 50) == (False, 0.5)  # fuzzing bursts between normal windows
    assert judge([16] * 74 + [0] * 26) == (False, 0.74)
    assert judge([16] * 75 + [0] * 25) == (True, 0.75)
    assert judge([15] * 100) == (False, 0.0)  # half the IDs unknown is not "most"
    check = VehicleCheck("m", windows=10)
    check.add(np.full(4, 30), np.full(4, 30), [()] * 4)
    assert check.verdict is None
    with caplog.at_level(logging.WARNING, logger="kdkit.stream"):
        check.add(np.full(20, 30), np.zeros(20, int), [()] * 20)  # only 6 more are judged
    assert check.verdict is False and check.share_of_windows == 0.4


def test_malformed_frames_are_dropped_and_counted(trained, recording, offline, caplog):
    msgs = read_messages(recording).slice(0, 300)
    good = _frames(msgs)
    t = good[150][0]
    bad = [can.Message(timestamp=t, arbitration_id=0x100, is_error_frame=True),
           can.Message(timestamp=t, arbitration_id=0x100, is_remote_frame=True),
           can.Message(timestamp=t, arbitration_id=0x100, is_fd=True, data=bytes(12)),
           (t, 0x100, bytes(9), False),            # 9 data bytes
           (t, 0x800, b"\x00", False),             # above 0x7FF, not extended
           (t, 0x20000000, b"\x00", True),         # above 29 bits
           (t, -1, b"\x00", False), (t, "7DF", b"\x00", False),
           (t, 0x100, [300], False),               # not bytes
           (t, 0x100, 5, False),                   # a count, not data (bytes(5) is five zero bytes)
           (math.nan, 0x100, b"\x00", False), ("soon", 0x100, b"\x00", False),
           (t - 1.0, 0x100, b"\x00", False),       # earlier than the previous frame
           (t, 0x100), "not a frame", None,
           can.Message(timestamp=t, arbitration_id=0x100, channel="can1")]  # another channel
    frames = good[:150] + bad + good[150:]
    det = Detector.from_checkpoint(trained, channel="can0")
    with caplog.at_level(logging.WARNING, logger="kdkit.stream"):
        got = [d for d in map(det.feed, frames) if d is not None]
    assert det.dropped == {"error_frame": 1, "remote_frame": 1, "fd_frame": 2, "bad_id": 4, "bad_payload": 2,
                           "bad_timestamp": 2, "time_backwards": 1, "bad_frame": 3}
    assert det.other_channels == {"can1": 1}  # left out, not dropped as bad
    assert det.frames == len(frames) and det.messages == 300
    np.testing.assert_allclose(_scores(got), offline(msgs), rtol=0, atol=1e-6)  # the good frames' windows
    logged = caplog.text
    assert "error frame" in logged and "channel 'can1'" in logged and "0x800" in logged

    batch = Detector.from_checkpoint(trained, channel="can0")  # the same frames as one batch
    np.testing.assert_allclose(_scores(batch.feed_many(frames)), offline(msgs), rtol=0, atol=1e-6)
    assert batch.dropped == det.dropped

    m = msgs.slice(0, 300)  # a Messages table with bad rows: dropped vectorized, same counts
    m.timestamp = m.timestamp.copy()
    m.timestamp[10], m.timestamp[20] = np.inf, m.timestamp[19] - 1
    m.can_id = m.can_id.copy()
    m.can_id[30] = 0x900
    table = Detector.from_checkpoint(trained)
    assert len(table.feed_many(m)) == 2 and table.messages == 297
    assert table.dropped == {"bad_timestamp": 1, "time_backwards": 1, "bad_id": 1}


def _as_messages(frames, source="table"):
    """Frames (timestamp, id, data, is_extended) as one Messages table."""
    n = len(frames)
    payload = np.zeros((n, 8), np.uint8)
    for i, f in enumerate(frames):
        payload[i, :len(f[2])] = np.frombuffer(f[2], np.uint8)
    return Messages(np.array([f[0] for f in frames]), np.array([f[1] for f in frames], np.uint32),
                    np.array([len(f[2]) for f in frames], np.uint8), payload, np.zeros(n, np.uint8), source=source)


def _fed_every_way(trained, frames, cut):
    """The decisions and counters of the frames fed one by one, as one iterable, as one Messages
    table and as two tables cut before frame ``cut``: all four must agree."""
    ways = {}
    det = Detector.from_checkpoint(trained)
    ways["feed"] = ([d for d in map(det.feed, frames) if d is not None], det)
    det = Detector.from_checkpoint(trained)
    ways["iterable"] = (det.feed_many(frames), det)
    det = Detector.from_checkpoint(trained)
    ways["table"] = (det.feed_many(_as_messages(frames)), det)
    det = Detector.from_checkpoint(trained)
    ways["two tables"] = (det.feed_many(_as_messages(frames[:cut])) + det.feed_many(_as_messages(frames[cut:])), det)
    return ways


def test_one_glitched_frame_is_dropped_alone_as_the_readers_skip_it(trained, recording, offline, caplog):
    """One frame stamped 100 s in the future cost the live detector 8 frames and its open window (it
    waited for 8 frames behind, then restarted the windows), and a Messages table fed to feed_many
    everything after it (699 of 1,000 messages dropped, no restart), where the file readers skip that
    one row. The frame after it shows it a lone glitch: it is withdrawn, alone, the same fed every
    way, and the windows are the offline windows of the recording without it."""
    msgs = read_messages(recording).slice(0, 3000)
    frames = _frames(msgs)
    k = 1050  # inside window 10, which it does not close
    frames[k] = (frames[k][0] + 100.0, *frames[k][1:])
    expected = offline(Messages(*(np.delete(getattr(msgs, a), k, axis=0) for a in
                                  ("timestamp", "can_id", "dlc", "payload", "label"))))
    with caplog.at_level(logging.WARNING, logger="kdkit.stream"):
        ways = _fed_every_way(trained, frames, cut=k + 1)  # "two tables": the glitch ends the first one
    for how, (got, det) in ways.items():
        assert det.dropped == {"time_glitch": 1} and det.timeline_restarts == 0, how
        assert det.messages == 2999 and len(got) == 29, how
        np.testing.assert_allclose(_scores(got), expected, rtol=0, atol=1e-6, err_msg=how)
    assert "glitched timestamp" in caplog.text and "time went back" not in caplog.text


@pytest.mark.parametrize("glitch", ["a glitched frame that closed a window", "clock reset to 0"])
def test_time_going_back_for_good_restarts_the_windows_instead_of_blinding_the_detector(trained, recording, caplog,
                                                                                        glitch):
    """A new user's gateway: one frame stamped 100 s in the future made the detector drop every frame
    after it (1,999 of 3,000) until the clock caught up, silently after 3 log lines; an interface
    whose timestamp counter resets would never be decided again. A glitched frame that closed a
    window fed alone cannot be withdrawn (its window was decided; in a batch it can, the windows are
    decided after the batch's frames are checked). After RESTART_AFTER frames in a row behind,
    in order, the detector takes their timeline from the first of them: the RESTART_AFTER - 1 frames
    before the one that confirmed it were held, not dropped (a reader starts the new timeline on the
    first row behind too), and the windows restart on the first of them and score as a fresh detector
    would from there, frame by frame, as one batch and as a Messages table alike."""
    from kdkit.stream.detector import RESTART_AFTER

    msgs = read_messages(recording).slice(0, 3000)
    frames = _frames(msgs)
    if glitch == "a glitched frame that closed a window":
        k = 999  # the last frame of window 9: the frame that decides it
        frames[k] = (frames[k][0] + 100.0, *frames[k][1:])
        decided_before = 10
    else:
        k = 1000
        frames[k + 1:] = [(f[0] - frames[k + 1][0] + 0.001, *f[1:]) for f in frames[k + 1:]]
        decided_before = 10
    first_new = k + 1  # frames k+1 .. k+RESTART_AFTER-1 held, then k+RESTART_AFTER confirms the timeline they start
    with caplog.at_level(logging.WARNING, logger="kdkit.stream"):
        ways = _fed_every_way(trained, frames, cut=k + 3)  # "two tables": the held frames span the cut
    assert "time went back" in caplog.text and "windows restart on the new timeline" in caplog.text
    assert f"the {RESTART_AFTER - 1} frames before the one that confirmed it were held, not dropped" in caplog.text
    got, det = ways["feed"]
    assert det.timeline_restarts == 1 and not det.dropped and det.messages == 3000 and det.held_frames == 0
    before = [d for d in got if d.first_message < k]
    assert len(before) == decided_before  # the windows closed before the clock went back are kept
    after = got[len(before):]
    # the rest: windows from the new timeline's first frame on, as a fresh detector scores them (its first
    # window starts on that frame, no gap before it, as build_graphs windows a new timeline offline)
    fresh = Detector.from_checkpoint(trained)
    expected = [d for d in map(fresh.feed, frames[first_new:]) if d is not None]
    assert len(after) == len(expected) > 15
    np.testing.assert_allclose(_scores(after), _scores(expected), rtol=0, atol=1e-6)
    assert det.stats()["timeline_restarts"] == 1
    for how, (other, d) in ways.items():
        if glitch == "a glitched frame that closed a window" and how != "feed":
            # a batch is collected before its windows are decided: its glitch is withdrawn alone
            assert d.dropped == {"time_glitch": 1} and d.timeline_restarts == 0 and len(other) == 29, how
            continue
        np.testing.assert_allclose(_scores(other), _scores(got), rtol=0, atol=1e-6, err_msg=how)
        assert d.timeline_restarts == 1 and d.dropped == det.dropped, how


def _accounted(det) -> bool:
    """Every frame fed is a message, a dropped frame, a frame of another channel or a held one."""
    return det.frames == det.messages + sum(det.dropped.values()) + sum(det.other_channels.values()) + det.held_frames


@pytest.mark.parametrize("behind", [3, 7])
def test_frames_stamped_in_the_past_are_held_then_dropped_when_the_old_timeline_goes_on(trained, recording, behind):
    """Fewer than RESTART_AFTER frames in a row behind, then frames in line with the old timeline:
    the held frames were stamped in the past and are dropped, all of them, whichever way they are fed
    (a table cut inside the run holds them across the cut); the windows are those of the recording
    without them, and every frame is accounted for at every step."""
    from kdkit.stream.detector import RESTART_AFTER

    assert behind < RESTART_AFTER
    msgs = read_messages(recording).slice(0, 2000)
    frames = _frames(msgs)
    k = 1030
    for j in range(k, k + behind):  # in order among themselves, 50 s in the past
        frames[j] = (frames[j][0] - 50.0, *frames[j][1:])
    fresh = Detector.from_checkpoint(trained)
    expected = fresh.feed_many(_as_messages(frames[:k] + frames[k + behind:]))
    for how, (got, det) in _fed_every_way(trained, frames, cut=k + 2).items():
        assert det.dropped == {"time_backwards": behind} and det.timeline_restarts == 0, how
        assert det.messages == 2000 - behind and det.held_frames == 0 and _accounted(det), how
        assert [d.first_message for d in got] == [d.first_message for d in expected], how
        np.testing.assert_allclose(_scores(got), _scores(expected), rtol=0, atol=1e-6, err_msg=how)


def test_frames_held_at_the_end_of_the_stream_are_counted_then_dropped(trained, recording):
    """A stream that ends while frames are held (fewer than RESTART_AFTER behind): they show in
    ``held_frames`` (so frames = messages + dropped + held at any moment) and ``end()`` drops them;
    a replay's summary does that itself. A frame behind but out of line with the held ones starts a
    run of its own: the earlier ones are dropped, and a restart then starts on the new run's first
    frame. A reader's timeline mark drops the frames still held before it."""
    from kdkit.stream.detector import RESTART_AFTER
    from kdkit.stream.run import RunSummary

    msgs = read_messages(recording).slice(0, 1000)
    frames = _frames(msgs)
    det = Detector.from_checkpoint(trained)
    for f in frames:
        det.feed(f)
    t_end = frames[-1][0]
    tail = [(t_end - 10.0 + 0.001 * j, *frames[j][1:]) for j in range(3)]
    for f in tail:
        assert det.feed(f) is None
    assert det.held_frames == 3 and not det.dropped and det.stats()["held_frames"] == 3 and _accounted(det)
    summary = RunSummary(det, "test", "live").finish()
    assert det.held_frames == 0 and det.dropped == {"time_backwards": 3} and _accounted(det)
    assert summary.to_dict()["dropped"] == {"time_backwards": 3}

    # out of line: 2 frames 10 s back, then RESTART_AFTER frames 20 s back (behind the held ones)
    det = Detector.from_checkpoint(trained)
    for f in frames:
        det.feed(f)
    first = [(t_end - 10.0 + 0.001 * j, *frames[j][1:]) for j in range(2)]
    second = [(t_end - 20.0 + 0.001 * j, *frames[j][1:]) for j in range(RESTART_AFTER + 200)]
    got = [d for d in map(det.feed, first + second) if d is not None]
    assert det.dropped == {"time_backwards": 2} and det.timeline_restarts == 1 and _accounted(det)
    assert det.messages == 1000 + RESTART_AFTER + 200
    assert [d.first_message for d in got] == [1000, 1100]  # the new timeline's windows start on its first frame
    assert got[0].start_time == second[0][0]

    # a reader's mark: the held frames were behind the old timeline, and the new one starts at the mark
    det = Detector.from_checkpoint(trained)
    for f in frames + tail[:2]:
        det.feed(f)
    det.new_timeline("a test")
    assert det.held_frames == 0 and det.dropped == {"time_backwards": 2} and _accounted(det)


@pytest.mark.parametrize("spike_at", [2, 5])
def test_a_lone_glitch_among_the_frames_of_a_restarted_clock_is_passed_over_as_the_reader_does(
        trained, recording, offline, tmp_path, spike_at):
    """A review (2026-12-07, night): a clock reset, then one of the next 8 frames stamped a little
    late (later than the frame after it, which follows on from the one before). The reader passes
    it over inside the restart's run and skips it alone; the detector dropped the frames held
    before it and waited for 8 more, so its windows started elsewhere. Now it drops the spike alone
    (time_glitch) and the new timeline starts where the reader starts it, fed every way."""
    msgs = read_messages(recording).slice(0, 2000)
    frames = _frames(msgs)
    k = 1200
    t0 = frames[k][0]
    frames[k:] = [(f[0] - t0 + 0.5, *f[1:]) for f in frames[k:]]  # the clock reset to 0.5 s
    j = k + spike_at
    frames[j] = ((frames[j - 1][0] + frames[j + 1][0]) / 2 + 0.05, *frames[j][1:])  # late, not past the old clock
    log = tmp_path / "spike.log"
    log.write_text("".join(f"({t:.6f}) can0 {i:03X}#{d.hex().upper()}\n" for t, i, d, _ in frames))
    read = read_messages(log, on_bad_rows="skip")
    assert read.skipped_rows == 1 and np.flatnonzero(read.restart).tolist() == [k]
    rounded = [(float(f"{t:.6f}"), *f) for t, *f in frames]
    for how, (got, det) in _fed_every_way(trained, rounded, cut=j).items():
        assert det.dropped == {"time_glitch": 1} and det.timeline_restarts == 1 and _accounted(det), how
        assert det.messages == 1999, how
        assert [d.first_message for d in got] == [*range(0, 1200, 100), *range(1200, 1900, 100)], how
        np.testing.assert_allclose(_scores(got), offline(read), rtol=0, atol=1e-6, err_msg=how)


def test_a_window_shorter_than_the_restart_run_drops_the_held_frames_fed_one_by_one(trained, recording):
    """feed decides at most one window per frame: with a window of fewer messages than RESTART_AFTER
    the held frames would close several at once, so fed one by one they are dropped as before; a
    batch decides every window and keeps them."""
    from kdkit.stream.detector import RESTART_AFTER

    msgs = read_messages(recording).slice(0, 400)
    frames = _frames(msgs)
    frames[200:] = [(f[0] - 30.0, *f[1:]) for f in frames[200:]]
    one = Detector.from_checkpoint(trained, stride=None)
    one.window = one.stride = 4  # a 4-message window (the checkpoint's is 100)
    got = [d for d in map(one.feed, frames) if d is not None]
    assert one.dropped == {"time_backwards": RESTART_AFTER - 1} and one.timeline_restarts == 1 and _accounted(one)
    # 50 windows before; the new timeline starts on the confirming frame (message 200): 193 messages, 48 windows
    assert len(got) == 50 + (200 - RESTART_AFTER + 1) // 4 and got[50].first_message == 200
    batch = Detector.from_checkpoint(trained)
    batch.window = batch.stride = 4
    assert len(batch.feed_many(frames)) == 100 and not batch.dropped and batch.timeline_restarts == 1


# ----------------------------------------------------------------------------- the live loop's edge cases
class _ScriptedBus:
    """A bus whose recv returns the given items in turn (an exception instance is raised)."""

    def __init__(self, items):
        self.items, self.shut = list(items), False
        self.channel_info = "scripted bus"

    def recv(self, timeout=None):
        item = self.items.pop(0) if self.items else None
        if item is None and timeout:
            threading.Event().wait(min(timeout, 0.05))
        if isinstance(item, BaseException):
            raise item
        return item

    def shutdown(self):
        self.shut = True

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.shutdown()


def test_stall_is_counted_and_a_lost_connection_ends_with_the_summary(trained, recording, caplog):
    frames = list(as_can_messages(read_messages(recording).slice(0, 250)))
    bus = _ScriptedBus(frames[:120] + [None] * 6 + frames[120:] + [can.CanOperationError("Network is down [Errno 100]")])
    det = Detector.from_checkpoint(trained)
    with caplog.at_level(logging.WARNING, logger="kdkit.stream"):
        summary = listen_bus(det, bus, stall_seconds=0.1, max_seconds=30, keep=True)
    assert summary.stalls == 1 and "no frame for" in caplog.text and "frames again" in caplog.text
    assert summary.stopped_by == "lost connection" and "Network is down" in summary.error
    assert summary.to_dict()["windows"] == 2 and det.messages == 250
    # a window never spans the silence (one did, decided when traffic came back, and missed the attack in it):
    # the open window's 20 messages are left undecided, the windows restart with the first frame after it
    assert [d.first_message for d in summary.decisions] == [0, 120]
    assert summary.to_dict()["undecided_messages"] == 20 + 30  # and the 30 after the last window, at the end
    assert "messages in no decided window: 50" in summary.format()


def test_a_stall_before_the_first_frame_is_no_stall(trained, recording, caplog):
    """A detector started before its bus counted "stall 1" for a bus that had never carried a frame."""
    frames = list(as_can_messages(read_messages(recording).slice(0, 120)))
    bus = _ScriptedBus([None] * 6 + frames + [KeyboardInterrupt()])
    with caplog.at_level(logging.WARNING, logger="kdkit.stream"):
        summary = listen_bus(Detector.from_checkpoint(trained), bus, stall_seconds=0.1, max_seconds=30)
    assert summary.stalls == 0 and "no frame yet after" in caplog.text and "stall 1" not in caplog.text


def test_the_restart_warning_counts_the_messages_left_undecided_alike_frame_by_frame_and_in_batches(trained,
                                                                                                    recording, caplog):
    """Through feed_many the warning said "the open window's 552 messages are not decided" where feed
    said 52 for the same frames (the batch's windows before the restart were still to be decided)."""
    frames = _frames(read_messages(recording).slice(0, 2000))
    frames[1552:] = [(f[0] - 500.0, *f[1:]) for f in frames[1552:]]  # the clock steps back 500 s at frame 1552
    counts = []
    for feed in ("feed", "iterable", "table"):
        det = Detector.from_checkpoint(trained)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="kdkit.stream"):
            if feed == "feed":
                for f in frames:
                    det.feed(f)
            else:
                det.feed_many(frames if feed == "iterable" else _as_messages(frames))
        counts.append((det.undecided, [r.getMessage().split("open window's ")[1] for r in caplog.records
                                       if "open window's" in r.getMessage()]))
    assert counts[0] == counts[1] == counts[2] == (52, ["52 messages are not decided)"])


def test_a_burst_faster_than_a_bus_across_two_blocks_is_warned(trained, recording, caplog):
    """The re-stamping check looked at fixed blocks of 256 frames: a burst of 300 frames 10 us apart
    that fell across two blocks went unreported. Every 256 consecutive frames are looked at."""
    frames = _frames(read_messages(recording).slice(0, 3000))
    a = 2432  # half way into a block of 256: each fixed block holds half of the burst
    t = frames[a][0]
    frames[a:a + 300] = [(t + k * 1e-5, *f[1:]) for k, f in enumerate(frames[a:a + 300])]
    ts = np.array([f[0] for f in frames])
    fixed = (ts[255::256] - ts[0::256][:len(ts[255::256])]) / 255  # what the fixed blocks saw: no block that fast
    assert fixed.min() >= 40e-6 and (ts[a + 255] - ts[a]) / 255 < 40e-6
    for feed in ("feed", "iterable"):
        det = Detector.from_checkpoint(trained)
        with caplog.at_level(logging.WARNING, logger="kdkit.stream"):
            if feed == "feed":
                for f in frames:
                    det.feed(f)
            else:
                det.feed_many(frames)
        assert det.restamped, feed

    bus = _ScriptedBus(frames[:150] + [OSError(19, "No such device")])
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(stream_run, "open_bus", lambda spec: bus)
        summary_path = Path(recording).parent.parent / "lost.json"
        out = main(["detect", "--checkpoint", str(trained), "--bus", "socketcan:can0", "--summary", str(summary_path)])
    s = json.loads(summary_path.read_text())
    assert out == 1 and bus.shut and s["stopped_by"] == "lost connection" and "No such device" in s["error"]
    assert s["messages"] == 150 and s["windows"] == 1


def test_ctrl_c_stops_with_the_summary(trained, recording, capsys):
    frames = list(as_can_messages(read_messages(recording).slice(0, 250)))
    bus = _ScriptedBus(frames + [KeyboardInterrupt()])
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(stream_run, "open_bus", lambda spec: bus)
        assert main(["detect", "--checkpoint", str(trained), "--bus", "virtual:x", "--all-decisions"]) == 0
    out = capsys.readouterr()
    assert len(out.out.splitlines()) == 2 and "stopped by interrupted (Ctrl-C)" in out.err and "2 windows" in out.err


def _listening_detector(trained, bus: str, summary: Path, *extra: str):
    """``kdkit detect --bus BUS`` in a subprocess, returned once it listens (its stall warning says
    so), with the stderr lines read so far."""
    import subprocess
    import sys
    import time

    kdkit = str(Path(sys.executable).parent / "kdkit")
    proc = subprocess.Popen([kdkit, "detect", "--checkpoint", str(trained), "--bus", bus, "--stall-seconds", "0.5",
                             "--max-seconds", "120", "--summary", str(summary), *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    err_lines = []
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        err_lines.append(line)
        if "no frame" in line or not line:  # ("no frame yet after 0.5 s": it listens)
            break
    return proc, err_lines


def test_sigterm_stops_kdkit_detect_with_its_summary(trained, tmp_path):
    """A gateway service stopped by systemd, docker or `timeout` (SIGTERM) lost its summary and its
    --summary file; it now stops as on Ctrl-C."""
    import os
    import signal

    summary = tmp_path / "term.json"
    proc, err_lines = _listening_detector(trained, "virtual:term", summary)
    os.kill(proc.pid, signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    err = "".join(err_lines) + err
    assert proc.returncode == 0, err
    assert "stopped by terminated (SIGTERM)" in err
    assert json.loads(summary.read_text())["stopped_by"] == "terminated (SIGTERM)"


def test_cli_live_virtual_bus(trained, recording, tmp_path, capsys):
    """kdkit detect --bus virtual:NAME with a sender on the same virtual channel."""
    msgs = read_messages(recording).slice(0, 3000)
    stop = threading.Event()

    def run():
        with can.Bus(interface="virtual", channel="kdkit-test-cli", preserve_timestamps=True) as tx:
            stop.wait(1.0)  # until kdkit detect listens
            for frame in as_can_messages(msgs):
                tx.send(frame)

    sender = threading.Thread(target=run, daemon=True)
    sender.start()
    rc = main(["detect", "--checkpoint", str(trained), "--bus", "virtual:kdkit-test-cli", "--max-messages", "3000",
               "--max-seconds", "60", "--summary", str(tmp_path / "s.json"), "--alarms", str(tmp_path / "a.jsonl")])
    sender.join(10)
    s = json.loads((tmp_path / "s.json").read_text())
    assert rc == 0 and s["mode"] == "live" and s["source"] == "virtual:kdkit-test-cli"
    assert s["messages"] == 3000 and s["windows"] == 30 and s["stopped_by"] == "max-messages"
    err = capsys.readouterr().err
    assert "decision latency p50" in err
    # a new user fed virtual:NAME from another process and got 0 frames without a word
    assert "frames sent from another process never reach this one" in err and "socketcan:vcan0" in err


def test_cli_bus_errors_name_the_bus(trained, capsys):
    assert main(["detect", "--checkpoint", str(trained), "--bus", "nosuch:can0"]) == 2
    assert "cannot open bus nosuch:can0" in capsys.readouterr().err
    assert main(["detect", "--checkpoint", str(trained), "--bus", "can0"]) == 2
    assert "expected INTERFACE:CHANNEL" in capsys.readouterr().err
    with pytest.raises(BusError, match="virtual"):
        open_bus(":x")


def test_model_files_are_checked(trained, tmp_path):
    with pytest.raises(FileNotFoundError, match="model file .*student.pt2 does not exist"):
        Detector.from_exported(tmp_path / "student.pt2")
    (tmp_path / "lone.pt2").write_bytes(b"not a package")
    with pytest.raises(FileNotFoundError, match="metadata kdkit export writes"):
        Detector.from_exported(tmp_path / "lone.pt2")
    (tmp_path / "old.pt2").write_bytes(b"not a package")
    (tmp_path / "old.json").write_text(json.dumps({"vocab": [1], "window": 100, "stride": 100, "node_features": ["x"],
                                                   "edge_features": ["y"], "graph_format": 5}))
    with pytest.raises(ValueError, match="graph format 5, this kdkit builds"):
        Detector.from_exported(tmp_path / "old.pt2")
    with pytest.raises(ValueError, match="threshold"):
        Detector(lambda gs: np.zeros(len(gs)), IdVocab.from_list([1]), 100, threshold=math.nan)


# ----------------------------------------------------------------------------- replays through kdkit detect
def test_real_candump_replayed_with_channel(trained, tmp_path, capsys):
    """The shared RAV4 log: can0 of its four channels, through kdkit detect, scored as offline."""
    require(REAL_CANDUMP.is_file(), f"{REAL_CANDUMP} not found")
    rc = main(["detect", "--checkpoint", str(trained), "--input", str(REAL_CANDUMP), "--channel", "can0",
               "--all-decisions", "--summary", str(tmp_path / "s.json")])
    out = capsys.readouterr()
    s = json.loads((tmp_path / "s.json").read_text())
    assert rc == 0 and s["messages"] == 53_800 and s["windows"] == 538 and s["stopped_by"] == "end of input"
    assert s["dropped"] == {} and s["skipped_rows"] == 0 and not s["restamped"] and s["messages_per_s"] > 0
    lines = [json.loads(x) for x in out.out.splitlines()]
    assert len(lines) == 538 and "attack_share" not in lines[0]  # a logger file is unlabelled
    ckpt = load_checkpoint(trained)
    ref = predict_scores(model_from_checkpoint(ckpt).eval(),
                         build_graphs(read_messages(REAL_CANDUMP, channel="can0"), IdVocab.from_list(ckpt["vocab"]), 100, 100))
    np.testing.assert_allclose([x["score"] for x in lines], ref, rtol=0, atol=1e-6)
    assert lines[0]["start_time"] == 46408.58493 and lines[0]["oov_ids"]  # the car's IDs are not the synthetic vocabulary
    assert "538 windows" in out.err
    assert s["unknown_vehicle"] is True and "does not look like a vehicle the model was trained on" in out.err


def test_a_log_whose_other_buses_start_late_is_read_as_its_first_bus(trained, recording, tmp_path):
    """A new user's capture held only can0 for its first 1.2 MiB (the readers look at the first MiB),
    then four buses: read without --channel, the other buses' frames were mixed into can0's windows
    silently. The file is read as the channel its start holds; the others are left out, counted and
    named in the summary, as with --channel can0."""
    from kdkit.stream import replay_file

    msgs = read_messages(recording)
    raw = msgs.can_id & np.uint32(~EXTENDED_ID_FLAG & 0xFFFFFFFF)
    span = float(msgs.timestamp[-1] - msgs.timestamp[0]) + 0.001
    rows = [f"({msgs.timestamp[i] + k * span:.6f}) can0 {raw[i]:03X}#"
            f"{msgs.payload[i, :msgs.dlc[i]].tobytes().hex().upper()}" for k in range(2) for i in range(len(msgs))]
    late = len(rows) * 9 // 10
    lines = rows[:late] + [x for i, r in enumerate(rows[late:]) for x in (r, r.replace(" can0 ", " can1 ", 1))
                           if x == r or i % 2 == 0]
    path = tmp_path / "late.log"
    path.write_text("\n".join(lines) + "\n")
    assert len("\n".join(rows[:late])) > (1 << 20)  # the other bus starts after the first MiB
    s = replay_file(Detector.from_checkpoint(trained), path).to_dict()
    extra = (len(rows) - late + 1) // 2
    assert s["channel"] == "can0" and s["messages"] == len(rows) and s["other_channels"] == {"can1": extra}
    same = replay_file(Detector.from_checkpoint(trained), path, channel="can0").to_dict()
    assert (same["windows"], same["alarms"], same["other_channels"]) == (s["windows"], s["alarms"], s["other_channels"])


def test_a_labelled_logger_file_gives_labelled_decisions(trained, recording, tmp_path):
    """A candump log with a ``.labels.csv`` sidecar (what train/evaluate read as labels): detect's
    decisions carry each window's attack share, as for a CSV recording (they had none)."""
    from kdkit.stream import replay_file

    msgs = read_messages(recording).slice(0, 2000)
    raw = msgs.can_id & np.uint32(~EXTENDED_ID_FLAG & 0xFFFFFFFF)
    path = tmp_path / "drive.log"
    path.write_text("".join(f"({msgs.timestamp[i]:.6f}) can0 {raw[i]:03X}#"
                            f"{msgs.payload[i, :msgs.dlc[i]].tobytes().hex().upper()}\n" for i in range(len(msgs))))
    t0, t1 = float(msgs.timestamp[500]), float(msgs.timestamp[799])
    (tmp_path / "drive.log.labels.csv").write_text(f"start,end,attack_type\n{t0:.6f},{t1:.6f},DoS\n")
    s = replay_file(Detector.from_checkpoint(trained), path, keep=True)
    shares = [d.attack_share for d in s.decisions]
    assert len(shares) == 20 and shares[5:8] == [1.0, 1.0, 1.0] and shares[:5] == [0.0] * 5
    # the summary meets the labels: "0 alarms" on a recording full of missed attacks looked clean
    lab = s.to_dict()["labels"]
    attack = [d.is_attack for d in s.decisions if d.attack_share > 0]
    normal = [d.is_attack for d in s.decisions if d.attack_share == 0]
    assert lab["windows"] == 20 and lab["attack_windows"] == len(attack) == 3
    assert (lab["detected"], lab["missed"]) == (sum(attack), len(attack) - sum(attack))
    assert (lab["false_alarms"], lab["normal_windows"]) == (sum(normal), len(normal))
    assert lab["recall"] == pytest.approx(sum(attack) / 3, abs=1e-6)
    assert (f"  labels: 3 attack windows, {sum(attack)} detected (recall {sum(attack) / 3:.2%}), "
            f"{3 - sum(attack)} missed; {sum(normal)} false alarms in {len(normal)} normal windows") in s.format()
    (tmp_path / "drive.log.labels.csv").unlink()  # no sidecar: unlabelled, as before
    unlabelled = replay_file(Detector.from_checkpoint(trained), path, keep=True)
    assert {d.attack_share for d in unlabelled.decisions} == {None}
    assert unlabelled.to_dict()["labels"] is None and "labels:" not in unlabelled.format()


def test_a_cut_gz_log_says_so_in_the_summary_line(trained, recording, tmp_path):
    """A .log.gz cut in half lost half its frames, but the summary line said "skipped rows: 1" (the
    loss counts as one row): it says the file is cut, and where."""
    import gzip

    from kdkit.stream import replay_file

    msgs = read_messages(recording).slice(0, 5000)
    raw = msgs.can_id & np.uint32(~EXTENDED_ID_FLAG & 0xFFFFFFFF)
    text = "".join(f"({msgs.timestamp[i]:.6f}) can0 {raw[i]:03X}#{msgs.payload[i, :msgs.dlc[i]].tobytes().hex().upper()}\n"
                   for i in range(len(msgs)))
    packed = gzip.compress(text.encode())
    path = tmp_path / "cut.log.gz"
    path.write_bytes(packed[:len(packed) // 2])
    s = replay_file(Detector.from_checkpoint(trained), path)
    d = s.to_dict()
    assert d["skipped_rows"] == 1 and "is lost" in d["truncated"] and d["messages"] < 4000
    assert "skipped rows: 1 (the file is cut: " in s.format()


def test_a_replayed_file_whose_clock_restarted_keeps_every_timeline(trained, recording, offline, tmp_path, caplog):
    """A candump log whose logger restarted its clock at frame 1,500 (and with one glitched frame
    before that) lost everything after the restart in `kdkit detect --input`: the reader skipped
    every row "going backwards" (1,500 of 3,000) before the detector saw them. The reader marks the
    new timeline, the detector's windows restart on it, and the decisions are `kdkit evaluate`'s
    (build_graphs of the same reading) window by window; only the glitched row is skipped. Replayed in
    real time, frame by frame, the reader's mark travels with the frames: the same windows (it was
    lost there). On a live bus, with no reader, the live rule confirms the restart after 8 frames
    behind and holds the 7 before the eighth (it dropped them until 2026-12-07): the same windows
    and scores again, the new timeline starting on its first frame as the reader starts it."""
    from kdkit.stream.detector import RESTART_AFTER

    msgs = read_messages(recording).slice(0, 3000)
    frames = _frames(msgs)
    frames[700] = (frames[700][0] + 50.0, *frames[700][1:])
    frames[1500:] = [(f[0] - frames[1500][0] + 0.5, *f[1:]) for f in frames[1500:]]
    log = tmp_path / "restarted.log"
    log.write_text("".join(f"({t:.6f}) can0 {i:03X}#{d.hex().upper()}\n" for t, i, d, _ in frames))
    read = read_messages(log, on_bad_rows="skip")
    assert read.skipped_rows == 1 and read.timeline_restarts == 1 and np.flatnonzero(read.restart).tolist() == [1499]
    with caplog.at_level(logging.WARNING, logger="kdkit.stream"):
        s = replay_file(Detector.from_checkpoint(trained), log, keep=True)
    d = s.to_dict()
    assert d["skipped_rows"] == 1 and d["timeline_restarts"] == 1 and not d["dropped"] and d["messages"] == 2999
    assert "faster than a CAN bus carries frames" not in caplog.text  # (the re-stamping check spanned the reset)
    assert [x.first_message for x in s.decisions] == [*range(0, 1400, 100), *range(1499, 2900, 100)]
    np.testing.assert_allclose(_scores(s.decisions), offline(read), rtol=0, atol=1e-6)
    live = Detector.from_checkpoint(trained)  # the frames as the log holds them (microseconds)
    expected = [x for x in map(live.feed, [(float(f"{t:.6f}"), *f) for t, *f in frames]) if x is not None]
    rt = replay_file(Detector.from_checkpoint(trained), log, realtime=True, keep=True)
    assert rt.to_dict()["timeline_restarts"] == 1 and not rt.to_dict()["dropped"]
    assert [x.first_message for x in rt.decisions] == [x.first_message for x in s.decisions]
    np.testing.assert_allclose(_scores(rt.decisions), _scores(s.decisions), rtol=0, atol=1e-6)
    assert live.dropped == {"time_glitch": 1} and live.timeline_restarts == 1 and live.messages == 2999
    assert RESTART_AFTER > 1 and [x.first_message for x in expected] == [x.first_message for x in s.decisions]
    np.testing.assert_allclose(_scores(expected), _scores(s.decisions), rtol=0, atol=1e-6)
    with pytest.raises(Exception, match=r"restarted.log:701: timestamp .* is out of line"):  # "error": named
        replay_file(Detector.from_checkpoint(trained), log, on_bad_rows="error")


def test_realtime_replay_and_limits(trained, recording, tmp_path, capsys):
    """--realtime paces frames with can.MessageSync (latency per window); --max-messages stops."""
    small = tmp_path / "DoS-short.csv"
    lines = recording.read_text().splitlines()
    small.write_text("\n".join(lines[:1 + 400]) + "\n")  # 400 messages, ~0.1 s of traffic
    assert main(["detect", "--checkpoint", str(trained), "--input", str(small), "--realtime", "--all-decisions",
                 "--summary", str(tmp_path / "s.json")]) == 0
    s = json.loads((tmp_path / "s.json").read_text())
    assert s["mode"] == "realtime replay" and s["windows"] == 4 and s["latency_ms_p99"] < 1000
    assert s["seconds"] >= 0.9 * (float(lines[400].split(",")[0]) - float(lines[1].split(",")[0]))
    capsys.readouterr()
    assert main(["detect", "--checkpoint", str(trained), "--input", str(recording), "--max-messages", "1000",
                 "--summary", str(tmp_path / "m.json"), "--threshold", "0"]) == 0
    m = json.loads((tmp_path / "m.json").read_text())
    assert m["messages"] == 1000 and m["alarms"] == m["windows"] == 10 and m["threshold"] == 0
    assert len(capsys.readouterr().out.splitlines()) == 10  # threshold 0: every window is an alarm


def test_replay_summary_and_bench_detect(trained, recording, capsys):
    summary = replay_file(Detector.from_checkpoint(trained), recording)
    s = summary.to_dict()
    assert s["windows"] == 160 and 0 < s["read_seconds"] < s["seconds"] and s["cpu_seconds"] > 0
    assert "160 windows" in summary.format()
    # a fast replay decides a block's windows at once: its summary does not call that a decision latency
    assert "latency per block of windows p50" in summary.format() and "decision latency" not in summary.format()
    assert main(["bench", "detect", "--model", str(trained), "--input", str(recording), "--repeats", "2", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    m = r["messages_per_s"]
    assert r["messages"] == 16_093 and r["repeats"] == 2 and 0 < m["min"] <= m["median"] <= m["max"]
    assert r["reader"].startswith("kdkit.data.readers") and r["machine"]["cores"] >= 1
    assert (r["engine"], r["single_window_engine"]) == ("native", "native")  # a GAT checkpoint: native throughout
    assert main(["bench", "detect", "--model", str(trained), "--input", str(recording), "--live", "--seconds", "0.6",
                 "--json"]) == 0
    live = json.loads(capsys.readouterr().out)
    assert live["windows"] >= 4 and 0 < live["latency_ms_p50"] <= live["latency_ms_p99"] and live["engine"] == "native"
    # from send: the same decisions, plus the frame's time in the bus queue (clocks of one process)
    assert 0 < live["send_to_decision_ms_p50"] <= live["send_to_decision_ms_p99"] <= live["send_to_decision_ms_max"]
    assert live["send_to_decision_ms_max"] >= live["latency_ms_max"]


def test_a_large_file_replays_in_chunks_with_the_same_decisions(trained, recording, tmp_path, monkeypatch):
    """From ``STREAM_BYTES`` on a recording is replayed in chunks (bounded memory; the first
    decisions before the whole file is read): the same decisions as read whole, for a CSV and a
    candump log, windows across chunk boundaries, --max-messages inside a chunk, counts kept."""
    import kdkit.stream.run as run

    msgs = read_messages(recording)
    log = tmp_path / "drive.log"
    lines = [f"({t:.6f}) can0 {int(i):03X}#{p[:d].tobytes().hex().upper()}\n"
             for t, i, p, d in zip(msgs.timestamp, msgs.can_id, msgs.payload, msgs.dlc)]
    lines.insert(777, "(1.0) can0 12#00\n")  # a bad line (2-digit ID is fine, time going back is not): skipped
    log.write_text("".join(lines))
    whole = {p: replay_file(Detector.from_checkpoint(trained), p, keep=True) for p in (recording, log)}
    monkeypatch.setattr(run, "STREAM_BYTES", 0)
    monkeypatch.setattr(run, "REPLAY_CHUNK_ROWS", 333)
    # a long replay announces its size: the graphs of the chunks come from the compiled builder
    monkeypatch.setattr(graphs, "COMPILED_AFTER", 1000)
    monkeypatch.setattr(graphs, "_expected_messages", 0)
    monkeypatch.setattr(graphs, "_built_messages", 0)
    monkeypatch.setattr(graphs, "BUILDER", "auto")
    for path in (recording, log):
        chunked = replay_file(Detector.from_checkpoint(trained), path, keep=True)
        a, b = whole[path].to_dict(), chunked.to_dict()
        assert (b["messages"], b["windows"], b["alarms"], b["skipped_rows"], b["dropped"]) == \
            (a["messages"], a["windows"], a["alarms"], a["skipped_rows"], a["dropped"])
        assert [d.first_message for d in chunked.decisions] == [d.first_message for d in whole[path].decisions]
        np.testing.assert_array_equal(_scores(chunked.decisions), _scores(whole[path].decisions))
    assert whole[log].to_dict()["skipped_rows"] == 1
    assert graphs._expected_messages > 1000  # so every chunk went through the compiled builder
    limited = replay_file(Detector.from_checkpoint(trained), recording, max_messages=1000).to_dict()
    assert limited["messages"] == 1000 and limited["windows"] == 10 and limited["stopped_by"] == "max-messages"


def test_vgae_checkpoint_uses_its_anomaly_score_and_threshold(kdkit_env, tmp_path, recording):
    from kdkit.config import make_config
    from kdkit.workflows import train

    cfg = make_config(model="vgae", type="student", dataset="synthetic", epochs=1, hidden=8, layers=1, heads=1,
                      embedding_dim=4, precision="32-true", accelerator="cpu", num_workers=0,
                      runs_dir=str(tmp_path / "runs"), run_name="vgae", save_compat=False)
    path = Path(train(cfg, progress=False)["best_checkpoint"])
    ckpt = load_checkpoint(path)
    det = Detector.from_checkpoint(path)
    assert det.threshold == ckpt["threshold"] != 0.5
    msgs = read_messages(recording).slice(0, 3000)
    got = det.feed_many(msgs)
    ref = predict_scores(model_from_checkpoint(ckpt).eval(), build_graphs(msgs, IdVocab.from_list(ckpt["vocab"]), 100, 100))
    np.testing.assert_allclose(_scores(got), ref, rtol=1e-6, atol=1e-6)
    assert [d.is_attack for d in got] == (ref >= ckpt["threshold"]).tolist()


def test_extended_ids_are_their_own_nodes_and_print_as_candump(trained):
    det = Detector.from_checkpoint(trained)
    frames = [(i * 1e-3, 0x18FEF100 if i % 2 else 0x100, bytes([i % 256]), bool(i % 2)) for i in range(100)]
    (d,) = det.feed_many(frames)
    assert set(d.oov_ids) == {0x100, 0x18FEF100 | EXTENDED_ID_FLAG} and det.dropped == {}
    assert sorted(d.to_dict()["oov_ids"]) == ["100", "18FEF100"]
    fd = det.clone()  # CAN FD frames of at most 8 bytes are kept, as kdkit.data.loggers keeps them
    fd.feed(can.Message(timestamp=1.0, arbitration_id=0x100, is_fd=True, data=bytes(8)))
    assert fd.messages == 1 and fd.dropped == {}


def test_max_seconds_and_all_channels_say_what_the_replay_did(trained, recording, tmp_path):
    """A file decided whole in its first block said "stopped by max-seconds" (and that the other
    channels were not counted); `--channel '*'` read every frame and counted them all as left out."""
    from kdkit.data.loggers import ALL_CHANNELS
    from kdkit.stream import replay_file

    msgs = read_messages(recording).slice(0, 3000)
    whole = replay_file(Detector.from_checkpoint(trained), recording).to_dict()
    fast = replay_file(Detector.from_checkpoint(trained), recording, max_seconds=1e-9).to_dict()
    assert fast["stopped_by"] == "end of input" and fast["windows"] == whole["windows"]
    fast_rt = replay_file(Detector.from_checkpoint(trained), recording, realtime=True, max_seconds=1e-9).to_dict()
    assert fast_rt["stopped_by"] == "max-seconds" and fast_rt["windows"] == 0  # paced: stopped before its first frame
    raw = msgs.can_id & np.uint32(~EXTENDED_ID_FLAG & 0xFFFFFFFF)
    path = tmp_path / "two.log"
    path.write_text("".join(f"({msgs.timestamp[i]:.6f}) can{i % 2} {raw[i]:03X}#"
                            f"{msgs.payload[i, :msgs.dlc[i]].tobytes().hex().upper()}\n" for i in range(len(msgs))))
    s = replay_file(Detector.from_checkpoint(trained), path, channel=ALL_CHANNELS)
    d = s.to_dict()
    assert d["messages"] == 3000 and d["other_channel_frames"] == 0 and d["other_channels"] == {}
    assert "left out as other channels" not in s.format()
    # 30 windows: too few for the vehicle check, which the summary said nothing about (unknown_vehicle: null)
    assert d["unknown_vehicle"] is None and d["windows"] == 30
    assert ("  vehicle check: not judged (30 of the 100 windows it needs); whether the model knows this car is "
            "unknown") in s.format()


def test_kdkit_detect_hears_another_process_on_a_udp_multicast_bus(trained, recording, tmp_path):
    """A live bus fed by another process without SocketCAN (no vcan module on this kernel):
    python-can's udp_multicast interface (msgpack is a dependency for it)."""
    import os
    import time

    import can

    group = f"239.74.{os.getpid() % 250}.{int(time.time()) % 250 + 1}"  # one group per run: no crosstalk
    summary = tmp_path / "udp.json"
    proc, err_lines = _listening_detector(trained, f"udp_multicast:{group}", summary, "--max-messages", "300")
    tx = can.Bus(interface="udp_multicast", channel=group)
    try:
        for frame in as_can_messages(read_messages(recording).slice(0, 300)):
            tx.send(frame)
            time.sleep(0.0005)
    finally:
        tx.shutdown()
    out, err = proc.communicate(timeout=60)
    err = "".join(err_lines) + err
    assert proc.returncode == 0, err
    s = json.loads(summary.read_text())
    assert s["stopped_by"] == "max-messages" and s["messages"] == 300 and s["windows"] == 3, err


def test_detect_warns_of_a_stride_above_the_window(trained, recording, capsys):
    """`--stride 150` with a 100-message window never looked at a third of the messages, silently."""
    assert main(["detect", "--checkpoint", str(trained), "--input", str(recording), "--stride", "150",
                 "--max-messages", "1500"]) == 0
    err = capsys.readouterr().err
    assert ("kdkit detect: warning: stride 150 > window 100: 50 of every 150 messages fall in no window and are never "
            "scored (attacks in them included)") in err
    assert main(["detect", "--checkpoint", str(trained), "--input", str(recording), "--max-messages", "500"]) == 0
    assert "stride" not in capsys.readouterr().err.split("replay of")[0]
