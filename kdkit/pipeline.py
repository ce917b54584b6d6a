"""The main job, end to end: ``kdkit demo`` (the README's first command) runs it on built-in
synthetic traffic: simulate -> prepare graphs -> print a dataset summary."""
from __future__ import annotations

from pathlib import Path


def demo(out: Path, quick: bool = False) -> int:
    """Run the demo into ``out``; returns a process exit code."""
    from kdkit.cli import main as cli_main

    out.mkdir(parents=True, exist_ok=True)
    print("== 1. synthetic CAN traffic and its graphs")
    return cli_main(["data", "info", "--dataset", "synthetic"])
