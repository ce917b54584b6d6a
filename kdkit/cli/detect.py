"""``kdkit detect``: live detection on a python-can bus or over a replayed recording.

    kdkit detect --model student.pt2 --input capture.log --channel can0 [--realtime]
    kdkit detect --checkpoint best.pt --bus socketcan:can0 [--max-seconds 60] [--alarms alarms.jsonl]

Alarms (or, with ``--all-decisions``, every window's decision) are JSON lines on stdout or in
``--alarms FILE``; the summary goes to stderr at the end (``--summary FILE``: as JSON too),
also after Ctrl-C. Exit status: 0, or 1 when a lost bus connection ended the run.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import os
import signal
import sys
import threading
from pathlib import Path

import torch

from kdkit.cli.main import COMMANDS, check_output_file, refuse_overwriting_inputs
from kdkit.stream.detector import ENGINES, MODEL_ENGINES, Detector
from kdkit.stream.run import BusError, OutputFailed, Terminated, run_detection
from kdkit.training.checkpoint import wrong_recording_kind
from kdkit.workflows.notebooks import in_sample_warning
from kdkit.workflows.scoring import check_channel

ENGINE_CHOICES_TEXT = (f"with --checkpoint {', '.join(MODEL_ENGINES['--checkpoint'][:-1])} or "
                       f"{MODEL_ENGINES['--checkpoint'][-1]}; with --model (.pt2) "
                       f"{', '.join(MODEL_ENGINES['--model'][:-1])} or {MODEL_ENGINES['--model'][-1]}")
"""Which engines go with which kind of model, for the ``--engine`` help and error."""


def _detector(args: argparse.Namespace) -> Detector:
    if args.model:
        return Detector.from_exported(args.model, threshold=args.threshold, stride=args.stride, channel=args.channel,
                                      engine=args.engine)
    return Detector.from_checkpoint(args.checkpoint, threshold=args.threshold, stride=args.stride, channel=args.channel,
                                    engine=args.engine)


def _check_options(args: argparse.Namespace) -> None:
    """Refuse numeric options that make no sense before the model is loaded (the option and value named),
    and output files that could not be written at the end."""
    check_output_file("--alarms", args.alarms)
    check_output_file("--summary", args.summary)
    for name, value in (("--max-seconds", args.max_seconds), ("--stall-seconds", args.stall_seconds)):
        if value is not None and not value > 0:  # (NaN too)
            raise ValueError(f"{name} must be > 0, got {value}")
    if not math.isfinite(args.stall_seconds):
        raise ValueError(f"--stall-seconds must be a finite number of seconds, got {args.stall_seconds}")
    if args.max_messages is not None and args.max_messages < 1:
        raise ValueError(f"--max-messages must be >= 1, got {args.max_messages}")
    if args.stride is not None and args.stride < 1:
        raise ValueError(f"--stride must be >= 1 (messages between window starts; leave it out for the model's own), "
                         f"got {args.stride}")
    if args.threshold is not None and not math.isfinite(args.threshold):
        raise ValueError(f"--threshold must be a finite number, got {args.threshold}")
    if args.threads < 0:
        raise ValueError(f"--threads must be >= 0 (0: torch's default), got {args.threads}")
    flag = "--model" if args.model else "--checkpoint"
    if args.engine not in MODEL_ENGINES[flag]:  # (a Detector refuses it too, after loading the model)
        raise ValueError(f"--engine {args.engine} does not go with {flag}: {ENGINE_CHOICES_TEXT}")


def _check_input(args: argparse.Namespace) -> None:
    """A replayed file must be a recording (not a model file), and ``--channel`` must apply to it:
    only logger files have bus channels (as kdkit evaluate --input refuses it)."""
    if args.input is None:
        return
    if Path(args.input).is_dir():  # (pick_reader said "no such file")
        raise ValueError(f"--input {args.input} is a folder: kdkit detect replays one recording as a bus would carry "
                         f"it; name one file of it (kdkit evaluate --input {args.input} scores every recording of a "
                         f"folder)")
    wrong = wrong_recording_kind(args.input)
    if wrong is not None:
        raise ValueError(wrong)
    check_channel([Path(args.input)], args.channel)


def cmd_detect(args: argparse.Namespace) -> int:
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.WARNING, format="kdkit detect: %(levelname)s: %(message)s", stream=sys.stderr)
    model = Path(args.model) if args.model else None  # an export is three files: none is written over
    refuse_overwriting_inputs({"--alarms": args.alarms, "--summary": args.summary},
                              {"--input": args.input, "--checkpoint": args.checkpoint, "--model": args.model,
                               "--model's .json": str(model.with_suffix(".json")) if model else None,
                               "--model's .npz": str(model.with_suffix(".npz")) if model else None})
    if args.alarms and args.summary and os.path.realpath(args.alarms) == os.path.realpath(args.summary):
        raise ValueError(f"--alarms and --summary are one file ({args.summary}): the summary would replace the "
                         "alarms; give two paths")
    _check_options(args)
    _check_input(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    detector = _detector(args)
    if detector.stride > detector.window:
        print(f"kdkit detect: warning: stride {detector.stride} > window {detector.window}: "
              f"{detector.stride - detector.window} of every {detector.stride} messages fall in no window and are "
              "never scored (attacks in them included); a stride <= the window scores every message", file=sys.stderr)
    if args.input and Path(args.input).is_file():  # as evaluate --input warns: a training recording is no test
        warned = in_sample_warning(args.checkpoint or args.model, args.input, show=False)
        if warned:
            print(f"kdkit detect: warning: {warned}", file=sys.stderr)
    if args.bus and args.bus.partition(":")[0] == "virtual":
        print("kdkit detect: note: python-can's virtual bus carries frames only between the buses of one process: "
              "frames sent from another process never reach this one. To feed it from another process use a "
              "SocketCAN vcan interface (Linux: ip link add dev vcan0 type vcan; --bus socketcan:vcan0) or "
              "python-can's udp_multicast interface (--bus udp_multicast:239.74.163.2); in Python, run_detection with a sender thread "
              "(docs/DETECTOR.md)", file=sys.stderr)
    out = open(args.alarms, "w", encoding="utf-8") if args.alarms else sys.stdout  # noqa: SIM115 - closed below

    where = args.alarms or "standard output"

    def emit(decision) -> None:
        if decision.is_attack or args.all_decisions:
            try:
                out.write(json.dumps(decision.to_dict()) + "\n")
                if args.flush:
                    out.flush()
            except BrokenPipeError:
                raise
            except OSError as err:  # a full disk, a device error: the run stops with its summary, not a traceback
                raise OutputFailed(f"writing the alarms to {where} failed: {err.strerror or err}") from None

    try:
        return _run(args, detector, out, emit, where)
    except BrokenPipeError:  # the reader of our stdout went away (`| head`): stop quietly, as other tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        print("kdkit detect: the alarm output was closed; stopped", file=sys.stderr)
        return 1
    finally:
        if out is not sys.stdout:
            try:
                out.close()
            except OSError:  # (its failure is the summary's error already)
                pass


def _terminate(signum, frame) -> None:
    raise Terminated()


def _run(args: argparse.Namespace, detector: Detector, out, emit, where: str = "standard output") -> int:
    # SIGTERM (systemd, docker stop, timeout, a SLURM job's end) stops the run as Ctrl-C does: with its summary
    before = signal.signal(signal.SIGTERM, _terminate) if threading.current_thread() is threading.main_thread() \
        else None
    try:
        summary = run_detection(detector, recording=args.input, bus=args.bus, channel=args.channel,
                                realtime=args.realtime, on_decision=emit, max_seconds=args.max_seconds,
                                max_messages=args.max_messages, stall_seconds=args.stall_seconds,
                                on_bad_rows=args.on_bad_rows)
    except BusError as err:
        print(f"kdkit: error: {err}", file=sys.stderr)
        return 2
    finally:
        if before is not None:
            signal.signal(signal.SIGTERM, before)
    try:
        out.flush()
    except BrokenPipeError:
        raise
    except OSError as err:  # the last alarms, written at the end
        if not summary.error:
            summary.error = f"writing the alarms to {where} failed: {err.strerror or err}"
    print(summary.format(), file=sys.stderr)
    if args.summary:
        try:
            Path(args.summary).write_text(json.dumps(summary.to_dict(), indent=2) + "\n")
        except OSError as err:
            print(f"kdkit: error: writing the summary to {args.summary} failed: {err.strerror or err} (it is "
                  "printed above)", file=sys.stderr)
            return 1
    if summary.error:
        print(f"kdkit: error: {summary.error}", file=sys.stderr)
        return 1
    return 0


def register(sub) -> None:
    """Adds ``kdkit detect``."""
    p = sub.add_parser("detect", help=COMMANDS["detect"][1],
                       description="Windows -> graphs -> model -> alarms, frame by frame. Alarms are JSON lines; a "
                                   "summary (windows, alarms, messages/s, decision latency p50/p99) ends every run, "
                                   "also on Ctrl-C.")
    model = p.add_mutually_exclusive_group(required=True)
    model.add_argument("--checkpoint", help="a kdkit checkpoint (best.pt; GAT, VGAE or fusion)")
    model.add_argument("--model", help="an exported student (.pt2 from kdkit export, with its .json beside it)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--input", help="replay a recording: candump .log, .asc, .blf, .trc or CSV (.gz too)")
    src.add_argument("--bus", help="a live bus as INTERFACE:CHANNEL (python-can), e.g. socketcan:can0 (virtual:NAME, python-can's "
                          "in-process bus, receives only what this process sends: for tests through the Python API)")
    p.add_argument("--channel", default=None,
                   help="keep only frames of this channel (e.g. can0 of a multi-bus log). A file of several"
                        " buses needs one ('*' reads them all as one stream).")
    p.add_argument("--realtime", action="store_true", help="replay at the recorded pace (can.MessageSync), frame by frame")
    p.add_argument("--threshold", type=float, default=None, help="decision threshold (default: the model's)")
    p.add_argument("--stride", type=int, default=None, help="messages between window starts (default: the model's; "
                                                            "smaller slides)")
    p.add_argument("--alarms", default=None, help="write the alarm JSON lines here (default: stdout)")
    p.add_argument("--all-decisions", action="store_true", help="write every window's decision, not only alarms")
    p.add_argument("--summary", default=None, help="also write the summary as JSON to this file")
    p.add_argument("--max-seconds", type=float, default=None,
                   help="stop after this many seconds of the run (from its start: reading the recording and the "
                        "model's first windows count; the model's loading does not)")
    p.add_argument("--max-messages", type=int, default=None, help="stop after this many frames")
    p.add_argument("--stall-seconds", type=float, default=2.0, help="a live bus silent this long is a stall: logged, "
                                                                     "counted, the loop goes on (default 2)")
    p.add_argument("--on-bad-rows", choices=["skip", "error"], default="skip",
                   help="bad rows of a replayed file: skip and count them (default) or stop with an error")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1; 0: torch's default)")
    p.add_argument("--engine", choices=list(ENGINES), default="auto",
                   help="what scores a window that a frame closes (live, --realtime) and a checkpoint's replayed "
                        f"blocks: {ENGINE_CHOICES_TEXT}. auto (default): kdkit's native GAT engine where it applies, "
                        "else the exported package or the checkpoint's model; an export's replayed blocks always run "
                        "its package")
    p.add_argument("--no-flush", dest="flush", action="store_false", help="do not flush after every alarm line")
    p.set_defaults(func=cmd_detect)
