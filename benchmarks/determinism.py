"""Does the same training give the same numbers every time? Repeat it in one process and compare.

    .venv/bin/python benchmarks/determinism.py --runs 4 --epochs 6 [--model gat] [--attention auto]
    for i in $(seq 10); do NUMBA_CACHE_DIR=$(mktemp -d) .venv/bin/python benchmarks/determinism.py; done

Trains the tiny model of ``tests/test_preemption.py`` on the built-in synthetic data ``--runs``
times in this process. Every call of kdkit's CPU kernels (fused attention, readout, layer tail,
dropout mask) is recorded with a hash of each array argument before and after the call. The first
call where a run's outputs differ from the first run's is reported: the kernel, the training step,
and whether its read-only inputs were equal. That is, did the kernel give other numbers for the same
input? Prints one JSON line.

How the layer tail's run-to-run difference was found (kdkit/models/norm_act.py, docs/PREEMPTION.md
"Limits"): with fresh numba caches, 6 of 10 processes had a run whose ``norm_act`` forward gave
other numbers in one row for the same inputs, and 0 of 8 after the fix. ``NUMBA_CACHE_DIR=$(mktemp -d)``
per process reproduces that set-up.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def _digest(a) -> str:
    if isinstance(a, np.ndarray):
        return hashlib.blake2b(np.ascontiguousarray(a).tobytes(), digest_size=8).hexdigest()
    return repr(a)[:40]


def _record_kernels(calls: list):
    """Wrap every kdkit CPU kernel so that each call appends (name, hashes before, hashes after);
    returns a function that puts the kernels back."""
    from kdkit.models import dropout, fused_attention, norm_act, readout

    def wrap(name, kernel):
        def call(*args):
            before = [_digest(a) for a in args]
            result = kernel(*args)
            calls.append((name, before, [_digest(a) for a in args]))
            return result
        return call

    saved = []
    for label, module in (("fused_attention", fused_attention), ("readout", readout), ("norm_act", norm_act)):
        for name in ("forward", "backward"):
            module._kernel(name)
        saved.append((module._kernels, dict(module._kernels)))
        for name in list(module._kernels):
            module._kernels[name] = wrap(f"{label}.{name}", module._kernels[name])
    dropout._kernel()
    saved.append((dropout._compiled, list(dropout._compiled)))
    dropout._compiled[0] = wrap("dropout.mask", dropout._compiled[0])

    def restore():
        for holder, original in saved:
            if isinstance(holder, dict):
                holder.update(original)
            else:
                holder[:] = original
    return restore


def _first_difference(ref: list, other: list) -> dict | None:
    for k, (a, b) in enumerate(zip(ref, other)):
        if a[0] == "step" or a[2] == b[2]:
            continue
        written = {i for i in range(len(a[1])) if a[1][i] != a[2][i] or b[1][i] != b[2][i]}
        return {"call": k, "step": sum(1 for r in ref[:k] if r[0] == "step"), "kernel": a[0],
                "read_only_inputs_equal": all(a[1][i] == b[1][i] for i in range(len(a[1])) if i not in written),
                "outputs_differing": [i for i in range(len(a[2])) if a[2][i] != b[2][i]]}
    return None if len(ref) == len(other) else {"call": min(len(ref), len(other)), "note": "different call counts"}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=4)
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--model", default="gat", choices=("gat", "vgae"))
    ap.add_argument("--attention", default="auto", choices=("auto", "fused", "stock"))
    args = ap.parse_args(argv)
    sys.path.insert(0, str(REPO / "tests"))
    import torch

    import test_preemption as tp  # the tiny configuration of the resume tests
    from kdkit.data.datasets import prepare
    from kdkit.training import trainer
    from kdkit.workflows.run import train

    calls: list = []
    restore = _record_kernels(calls)
    step = trainer.FabricTrainer._step

    def marked(self, *a):
        calls.append(("step", [], []))
        return step(self, *a)

    trainer.FabricTrainer._step = marked
    runs, weights = [], []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            data = prepare("synthetic", cache_dir=Path(tmp) / "cache")
            for i in range(args.runs):
                calls.clear()
                out = train(tp.tiny(Path(tmp), args.model, f"run{i}", epochs=args.epochs, attention=args.attention),
                            progress=False, data=data)
                runs.append(list(calls))
                weights.append(torch.load(out["last_checkpoint"], weights_only=True)["model"])
    finally:
        trainer.FabricTrainer._step = step
        restore()
    result = {"model": args.model, "attention": args.attention, "epochs": args.epochs, "runs": args.runs,
              "kernel_calls_per_run": len(runs[0]),
              "differences": [{"run": i, "weights_equal": all(torch.equal(weights[0][k], weights[i][k]) for k in weights[0]),
                               "first_kernel_difference": _first_difference(runs[0], runs[i])}
                              for i in range(1, args.runs)]}
    result["all_equal"] = all(d["weights_equal"] and d["first_kernel_difference"] is None for d in result["differences"])
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
