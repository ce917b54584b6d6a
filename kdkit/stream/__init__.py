"""Live detection: a trained model next to a CAN bus, or over a replayed recording.

:mod:`.detector` owns :class:`~kdkit.stream.detector.Detector` (frames in, one
:class:`~kdkit.stream.detector.Decision` per closed window out: the same windows, graphs and
scores as the offline path), the frame checks (error/remote/CAN FD frames, bad IDs, time going
backwards: counted, never a crash) and the re-stamped-timestamps check. :mod:`.run` owns the
loops the ``kdkit detect`` command, the gateway notebook and ``kdkit bench detect`` share: a
replayed file (as fast as possible, or paced with ``can.MessageSync``) and a live python-can bus
(stalls counted, a lost connection ends the run with its summary). :mod:`.report` owns the
gateway notebook's figures and tables (alarm timeline, latency histogram, alarm table).

Layer 7 (between deploy/cluster and bench): may import every library layer up to
:mod:`kdkit.deploy`; never bench or a front end.
"""
from kdkit.stream.detector import DROP_REASONS, Decision, Detector
from kdkit.stream.run import BusError, RunSummary, listen_bus, open_bus, replay_file, run_detection

__all__ = ["DROP_REASONS", "BusError", "Decision", "Detector", "RunSummary", "listen_bus", "open_bus", "replay_file",
           "run_detection"]
