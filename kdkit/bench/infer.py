"""``kdkit bench infer``: student inference throughput and single-window latency on one core.

Variants (``--variants``), each ``<precision>-<path>``:

- ``fp32-eager`` / ``bf16-eager``: the stock PyG model, eager: the checkpoint's model with
  ``set_attention_kernel(model, "stock")`` (PyG's ``GATv2Conv`` attention, torch's dropout, PyG's
  pooling), not kdkit's fused CPU kernels.
- ``fp32-scorer`` / ``bf16-scorer``: :class:`kdkit.models.scorer.GATScorer` (no scatter max), still
  eager: scorer/eager is the gain of the *algorithm* alone.
- ``fp32-stock-compiled``: that stock model under ``torch.compile``; ``fp32-compiled`` /
  ``bf16-compiled``: the scorer under ``torch.compile``; compiled/scorer is the gain of *compilation*.
- ``fp32-aot``: the scorer exported ahead of time (``kdkit export``, what a gateway loads).

Every variant is built (and compiled) first, then measured in interleaved rounds (variant A, B,
C, A, B, C, ...), so a slow phase of a shared machine hits all of them; each figure is the
min/median/max over the rounds, with CPU time of the measuring thread beside wall time. The
throughput figures score windows already in the graph store and count ``stride`` new messages
per window scored (``window`` when the windows do not overlap: with overlapping windows each
message is scored several times, and a recording's first window brings ``window - stride`` more
messages once); ``end_to_end`` replays a recording through :mod:`kdkit.stream` (read -> windows ->
graphs -> scores), messages read per second, each row with the detector engine that ran.
"""
from __future__ import annotations

import contextlib
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from kdkit.bench.detect import bench_replay
from kdkit.data.loader import collate_indices, gather_windows
from kdkit.deploy.export import export_checkpoint, load_exported
from kdkit.models.layers import set_attention_kernel
from kdkit.models.scorer import GATScorer, scorer_inputs
from kdkit.training.checkpoint import load_checkpoint, model_from_checkpoint
from kdkit.training.cpu_speedups import tune_cpu_allocator
from kdkit.training.hardware import machine_info
from kdkit.workflows.run import checkpoint_data

VARIANTS = ("fp32-eager", "bf16-eager", "fp32-scorer", "bf16-scorer", "fp32-stock-compiled", "fp32-compiled",
            "bf16-compiled", "fp32-aot")
GAT_ONLY = {"fp32-scorer", "bf16-scorer", "fp32-compiled", "bf16-compiled", "fp32-aot"}
DEFAULT_VARIANTS = ("fp32-eager", "fp32-scorer", "fp32-compiled", "fp32-aot", "bf16-eager")


# ----------------------------------------------------------------------------- inference
def _percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def _spread(values: list[float], digits: int = 3) -> dict:
    return {"min": round(min(values), digits), "median": round(statistics.median(values), digits),
            "max": round(max(values), digits)}


def _build(name: str, ckpt: dict, kind: str, checkpoint: str | Path, package: Path):
    """The scoring callable of variant ``name`` (compiled/exported here, untimed); the AOT
    variant exports ``checkpoint`` to ``package`` as ``kdkit export`` does."""
    prec, mode = name.split("-", 1)
    model = model_from_checkpoint(ckpt).eval()
    for module in model.modules():  # every NodeInput (a fusion pair has two): no per-batch ID range check
        if hasattr(module, "validate_inputs"):
            module.validate_inputs = False
    if mode == "aot":  # ahead-of-time compiled package (kdkit export): what a gateway runs
        export_checkpoint(checkpoint, package)
        fn = load_exported(package)
    elif mode in ("scorer", "compiled"):
        scorer = GATScorer(model)
        if mode == "compiled":
            import torch._dynamo as dynamo

            dynamo.reset()
            scorer = torch.compile(scorer, dynamic=True)
        fn = lambda batch, s=scorer: s(*scorer_inputs(batch))
    elif mode == "stock-compiled":
        import torch._dynamo as dynamo

        set_attention_kernel(model, "stock")  # PyG's attention, torch's dropout, PyG's pooling: the stock model
        dynamo.reset()
        fn = torch.compile(model, dynamic=True)
    else:  # eager: the stock model, as its label says (a checkpoint's model runs kdkit's fused kernels on CPU)
        set_attention_kernel(model, "stock")
        fn = model
    if kind == "vgae":
        return (lambda batch, m=fn: m.anomaly_score(batch)), prec
    if kind == "fusion":
        return (lambda batch, m=fn: m.window_score(batch)), prec
    return fn, prec


def check_variants(variants: str, kind: str = "gat") -> list[str]:
    """The variant names ``variants`` stands for (``default``, ``all`` or a comma list of
    :data:`VARIANTS`); cheap, so a notebook checks them before its long sections.

    Raises:
        ValueError: an unknown name, listing every known one.
    """
    if variants in ("all", "default"):
        return [v for v in (VARIANTS if variants == "all" else DEFAULT_VARIANTS) if kind == "gat" or v not in GAT_ONLY]
    wanted = [v.strip() for v in variants.split(",") if v.strip()]
    unknown = sorted(set(wanted) - set(VARIANTS))
    if unknown or not wanted:
        raise ValueError(f"--variants: unknown {unknown or repr(variants)}; choose from {list(VARIANTS)}, "
                         "'default' or 'all'")
    return wanted


def bench_infer(checkpoint: str | Path, dataset: str | None = None, data_root: str | None = None,
                batch_size: int = 64, seconds: float = 3.0, single: int = 2000, variants: str = "default",
                split: str = "val", rounds: int = 3, end_to_end: str | Path | None = None,
                end_to_end_repeats: int = 3) -> dict:
    """Inference throughput and latency of a checkpoint on one core (see the module docstring).

    Args:
        checkpoint: a kdkit checkpoint (``best.pt``).
        dataset: windows to score (default: the checkpoint's training dataset).
        data_root: folder holding the datasets.
        batch_size: windows per batch for the throughput figure. Default 64: on the EPYC test
            machine the AOT student scored 1.47-1.61 M messages/s at 32 hcrl-sa windows, 1.51-1.65 M
            at 64, 1.32-1.52 M at 128 and 0.94-1.19 M at 256 (3 alternating runs each; smaller
            per-edge tensors stay in cache).
        seconds: measuring time per throughput figure, split over the rounds. Default 3.
        single: single-window calls timed for p50/p99 per variant, split over the rounds. Default 2000.
        variants: ``default`` (fp32 eager/scorer/compiled/aot and bf16 eager), ``all``, or a comma list of
            :data:`VARIANTS` (the scorer variants are GAT only).
        split: which split's windows to score. Default ``val``.
        rounds: interleaved measuring rounds per variant. Default 3.
        end_to_end: a recording replayed through the detector (read -> graphs -> scores) for the
            end-to-end figure; ``auto`` = the longest file behind the scored split; None (default here;
            ``kdkit bench infer`` passes ``auto``) skips it.
        end_to_end_repeats: timed replays of it per model form. Default 3.
    """

    torch.set_num_threads(1)
    tune_cpu_allocator()  # as for training: freed activations stay in the heap for the next batch
    ckpt = load_checkpoint(checkpoint)
    window = int(ckpt.get("train_config", {}).get("window", 100))
    # new messages a window brings: the stride (a stream of M messages gives about M / stride windows)
    stride = int(ckpt.get("train_config", {}).get("stride") or window)
    data = checkpoint_data(ckpt, dataset, data_root)
    gs = data.splits[split]
    kind = ckpt["model_config"]["kind"]
    n = len(gs)
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    spans = [np.arange(i, min(i + batch_size, n)) for i in range(0, n, batch_size)]
    wanted = check_variants(variants, kind)
    if kind != "gat" and set(wanted) & GAT_ONLY:
        raise ValueError(f"--variants {sorted(set(wanted) & GAT_ONLY)} need a GAT classifier, {checkpoint} holds a {kind}")
    n_params = sum(p.numel() for p in model_from_checkpoint(ckpt).parameters())

    def gather(idx):  # store -> batch, timed with the model
        return gather_windows(gs, idx) if kind == "gat" else collate_indices(gs, idx)

    tmp = tempfile.TemporaryDirectory()
    package = Path(tmp.name) / "student.pt2"
    built, warmup = {}, {}
    for name in wanted:
        t0 = time.perf_counter()
        fn, prec = _build(name, ckpt, kind, checkpoint, package)  # outside inference mode: torch.export traces here
        amp = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if prec == "bf16" else contextlib.nullcontext
        with torch.inference_mode(), amp():
            for idx in spans[:2]:  # untimed: compilation, allocator warm-up
                fn(gather(idx))
            fn(gather([0]))
        built[name], warmup[name] = (fn, amp), time.perf_counter() - t0
    tput = {k: [] for k in wanted}
    tput_cpu = {k: [] for k in wanted}
    lat = {k: [] for k in wanted}
    lat_cpu = {k: [] for k in wanted}
    per_round, calls = seconds / rounds, max(single // rounds, 1)
    with torch.inference_mode():
        for r in range(rounds):
            for name in wanted:  # interleaved: every variant once per round
                fn, amp = built[name]
                with amp():
                    windows, t0, c0 = 0, time.perf_counter(), time.thread_time()
                    while time.perf_counter() - t0 < per_round:
                        for idx in spans:
                            fn(gather(idx))
                            windows += len(idx)
                    dt, dc = time.perf_counter() - t0, time.thread_time() - c0
                    tput[name].append(windows / dt * stride)
                    tput_cpu[name].append(windows / max(dc, 1e-9) * stride)
                    for i in range(calls + (20 if r == 0 else 0)):
                        t, c = time.perf_counter(), time.thread_time()
                        fn(gather([(r * calls + i) % n]))
                        if r > 0 or i >= 20:
                            lat[name].append(time.perf_counter() - t)
                            lat_cpu[name].append(time.thread_time() - c)
    results = {}
    for name in wanted:
        m = _spread(tput[name], 0)
        results[name] = {"messages_per_s": round(statistics.median(tput[name])), "messages_per_s_spread": m,
                         "windows_per_s": round(statistics.median(tput[name]) / stride),
                         "messages_per_cpu_s": round(statistics.median(tput_cpu[name])),
                         "latency_ms_p50": round(1000 * _percentile(lat[name], 50), 3),
                         "latency_ms_p99": round(1000 * _percentile(lat[name], 99), 3),
                         "latency_cpu_ms_p50": round(1000 * _percentile(lat_cpu[name], 50), 3),
                         "latency_cpu_ms_p99": round(1000 * _percentile(lat_cpu[name], 99), 3),
                         "warmup_seconds": round(warmup[name], 2)}
    best = max(results, key=lambda k: results[k]["messages_per_s"])
    fastest_p99 = min(results, key=lambda k: results[k]["latency_ms_p99"])
    out = {"benchmark": "infer", "checkpoint": str(checkpoint), "model": kind, "parameters": n_params,
           "dataset": data.name, "split": split, "windows": n, "window": window, "stride": stride,
           "batch_size": batch_size,
           "messages_counted": (f"{stride} new messages per window scored (the stride)"
                                + (f": windows overlap, each message is in {window / stride:g} windows; a recording's "
                                   f"first window brings {window - stride} more, once" if stride < window else
                                   f": {stride - window} messages between windows are read, not scored"
                                   if stride > window else "")),
           "nodes_per_window": round(float(np.mean(gs.num_nodes)), 1),
           "edges_per_window": round(float(np.mean(gs.num_edges)), 1), "threads": 1, "rounds": rounds,
           "variants": results, "effects": _effects(results), "best_throughput": best, "best_p99": fastest_p99,
           "latency_includes": "gather of one window from the graph store + forward (no graph building from messages)",
           "cpu_figures": "per CPU second of the measuring thread (time.thread_time): what an idle core would give"}
    with tmp:
        if end_to_end:
            out["end_to_end"] = _end_to_end(checkpoint, gs, end_to_end, end_to_end_repeats,
                                            package if package.is_file() else None)
    out["machine"] = machine_info()
    return out


def _effects(results: dict) -> dict:
    """Speed ratios that separate the algorithm (scorer vs stock, both eager) from compilation."""
    pairs = {"algorithm: scorer / stock, both eager fp32": ("fp32-scorer", "fp32-eager"),
             "compilation: compiled scorer / eager scorer, fp32": ("fp32-compiled", "fp32-scorer"),
             "compilation: compiled stock / eager stock, fp32": ("fp32-stock-compiled", "fp32-eager"),
             "ahead of time: exported scorer / eager scorer, fp32": ("fp32-aot", "fp32-scorer"),
             "precision: bf16 / fp32, stock eager": ("bf16-eager", "fp32-eager")}
    return {label: round(results[a]["messages_per_s"] / max(results[b]["messages_per_s"], 1), 2)
            for label, (a, b) in pairs.items() if a in results and b in results}


CHECKPOINT_ROW = "checkpoint (torch engine: the checkpoint's model, eager)"
EXPORTED_ROW = "exported (.pt2, AOT scorer)"


def _end_to_end(checkpoint, gs, path, repeats: int, package: Path | None) -> dict:
    """Replay a recording through the detector: file -> windows -> graphs -> scores, messages/s."""
    if path == "auto":
        files = [Path(f) for f in getattr(gs, "files", []) if Path(f).is_file()]
        if not files:
            return {"skipped": "the scored split lists no readable recording; pass end_to_end=PATH"}
        path = max(files, key=lambda f: f.stat().st_size)
    out = {"input": str(path)}
    # the checkpoint row runs the detector's torch engine (the checkpoint's model, eager, with the
    # attention kernel it was trained with), not kdkit detect's default native engine; each row records
    # what scored its blocks (engine) and its single windows (single_window_engine)
    forms = {CHECKPOINT_ROW: (str(checkpoint), "torch")}
    if package is not None:
        forms[EXPORTED_ROW] = (str(package), "auto")
    for label, (model, engine) in forms.items():
        r = bench_replay(model, path, repeats=repeats, engine=engine)
        out[label] = {"messages_per_s": r["messages_per_s"], "messages_per_cpu_s": r["messages_per_cpu_s"],
                      "messages": r["messages"], "windows": r["windows"], "engine": r["engine"],
                      "single_window_engine": r["single_window_engine"]}
    return out


