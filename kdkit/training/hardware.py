"""Facts about this machine (CPU model and flags, cores, memory, GPU, library versions) that
benchmarks record and the precision policy keys its cache by."""
from __future__ import annotations

import os
import platform
from pathlib import Path

import psutil
import torch


def machine_info() -> dict:
    """The machine a figure was measured on."""

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass

    info = {"cpu": cpu, "cores": os.cpu_count(), "ram_gib": round(psutil.virtual_memory().total / 2**30, 1),
            "load_avg_1min": round(os.getloadavg()[0], 2),  # > 0 means other work shared the cores
            "python": platform.python_version(), "torch": torch.__version__, "torch_threads": torch.get_num_threads()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info
