"""Progress bars in a terminal and in a log (a SLURM job's output, a pipe)."""
from __future__ import annotations

import io
import subprocess
import sys

from kdkit.data import progress

SCRIPT = r'''
import sys, time
from kdkit.data import progress
progress.LOG_INTERVAL = 0.2
print("before", file=sys.stderr, flush=True)
bar = progress.progress_bar(total=4, desc="epoch 1/1", leave=False)
for _ in range(4):
    time.sleep(0.15)
    bar.update(1)
bar.close()
print("after", file=sys.stderr, flush=True)
'''


def test_a_bar_in_a_log_writes_whole_lines_not_redraws(tmp_path):
    """In a SLURM log tqdm's carriage-return redraws ran into the messages around them."""
    err = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=120,
                         cwd=tmp_path).stderr
    lines = err.splitlines()
    assert "\r" not in err and lines[0] == "before" and lines[-1] == "after"
    bars = lines[1:-1]
    assert bars and all(line.startswith("epoch 1/1:") and line == line.rstrip() for line in bars)
    assert len(bars) <= 3  # at most one line per interval, none at the start


def test_a_short_bar_in_a_log_writes_nothing(monkeypatch, capsys):
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    bar = progress.progress_bar(total=3, desc="prepare x", unit="file")
    assert isinstance(bar.fp._wrapped, progress.LogLines) and bar.delay == bar.mininterval == progress.LOG_INTERVAL
    for _ in range(3):
        bar.update(1)
    bar.close()
    assert sys.stderr.getvalue() == ""  # ended before the first minute: no line at all


def test_a_terminal_keeps_the_live_bar(monkeypatch):
    class Tty(io.StringIO):
        def isatty(self):
            return True

    monkeypatch.setattr(sys, "stderr", Tty())
    bar = progress.progress_bar(total=2, desc="live")
    bar.update(2)
    bar.close()
    assert "\r" in sys.stderr.getvalue() and "live: 100%" in sys.stderr.getvalue()


def test_log_lines_drop_the_clearing():
    out = io.StringIO()
    lines = progress.LogLines(out)
    lines.write("\repoch 1:  50%|##   | 1/2   ")
    lines.write("\r" + " " * 30 + "\r")
    assert out.getvalue() == "epoch 1:  50%|##   | 1/2\n"
