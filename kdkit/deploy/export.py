"""``kdkit export``: a checkpoint's inference pass as an ahead-of-time compiled ``.pt2`` package
(torch.export + AOTInductor) with the metadata a gateway needs to build graphs (vocabulary,
feature layout, window, threshold) and to read the output (``output_kind``). Needs only the
checkpoint: the example graphs it is traced with are synthesized from its vocabulary.

Two families export, with the same tensor inputs (:data:`kdkit.models.scorer.INPUTS`):

- the GAT classifier (:class:`kdkit.models.scorer.GATScorer`): ``output_kind`` ``"logits"``,
  ``[G, 2]``; a window is an attack when ``softmax(logits)[:, 1] >= threshold``;
- the fusion student (:class:`kdkit.models.fusion_scorer.FusionScorer`, ``shared_encoder=True``):
  ``output_kind`` ``"score"``, the fused score ``[G]``; a window is an attack when
  ``score >= threshold`` (0.0), no softmax.

    kdkit export --checkpoint runs/x/checkpoints/best.pt --out student.pt2
    score = load_exported("student.pt2"); score(batch)      # score.output_kind says which

Beside a GAT's package it also writes ``student.npz``: the same weights for
:class:`kdkit.models.native.NativeGAT`, the detector's engine for single windows (copy it to the
gateway with the ``.pt2`` and the ``.json``; without it the detector calls the package).
"""
from __future__ import annotations

import copy
import hashlib
import itertools
import json
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils import _pytree as pytree

from kdkit.data.datasets import file_sha256
from kdkit.data.graphs import IdVocab, build_graphs
from kdkit.data.loader import collate_indices
from kdkit.data.readers import EXTENDED_ID_FLAG, MAX_CAN_ID, MAX_STANDARD_ID, Messages
from kdkit.data.store import scratch_tag
from kdkit.models.fusion_scorer import OUTPUT_KIND as FUSION_OUTPUT_KIND
from kdkit.models.fusion_scorer import FusionScorer
from kdkit.models.native import NativeGAT, unsupported_reason
from kdkit.models.scorer import INPUTS, GATScorer, check_batch, scorer_inputs
from kdkit.training.checkpoint import check_threshold_fitted, load_checkpoint, model_from_checkpoint, provenance
from kdkit.training.cpu_speedups import tune_cpu_allocator
from kdkit.workflows.run import check_graph_settings
from kdkit.workflows.scoring import check_checkpoint_layout


OUTPUTS = {  # output_kind -> what the metadata's "output" says
    "logits": "logits [graphs, 2]; attack probability = softmax(...)[:, 1]",
    FUSION_OUTPUT_KIND: "fused score [graphs] (kdkit.models.fusion.FusionModel.window_score); an attack when "
                        "score >= threshold (compare directly, no softmax)",
}
UNSUPPORTED = ("export supports the GAT classifier and the fusion student (the VGAE's anomaly score is not "
               "exported; the fusion teacher pair neither: distil a fusion student from it)")


def _fusion_teacher_message(where: str) -> str:
    return (f"{where} is a fusion teacher pair (shared_encoder=False): export supports the fusion student "
            "(one shared encoder with two heads); distil one with kdkit train --model fusion --type student "
            "--teacher <this checkpoint>")


def output_kind(config: dict) -> str:
    """``"logits"`` (GAT) or ``"score"`` (fusion student) for a model config; ``ValueError`` for
    anything :func:`export_model` does not export."""
    kind = (config or {}).get("kind")
    if kind == "gat":
        return "logits"
    if kind == "fusion":
        if not config.get("shared_encoder"):
            raise ValueError(_fusion_teacher_message("the model"))
        return FUSION_OUTPUT_KIND
    raise ValueError(f"{UNSUPPORTED}, not {kind!r}")


def export_model(model: nn.Module, example_batch, out: str | Path, threads: int = 1) -> Path:
    """Export ``model`` (any mode: exported in eval mode) to ``out`` (``.pt2``): a GATClassifier as a
    :class:`~kdkit.models.scorer.GATScorer` (logits ``[G, 2]``), a fitted fusion student as a
    :class:`~kdkit.models.fusion_scorer.FusionScorer` (fused score ``[G]``).
    ``example_batch``: a kdkit batch of >= 2 graphs.

    ``threads``: the CPU threads the package is compiled for (default 1, a gateway core).
    AOTInductor bakes the thread count of the compiling process into its kernels: a package
    compiled with 2 threads and run on one scored windows 2.8x slower (0.55 vs 1.55 M messages/s
    here), since every tiny kernel pays for a parallel region.
    """
    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")

    kind = output_kind(getattr(model, "config", {}))
    if example_batch.num_graphs < 2:
        raise ValueError("export needs an example batch of at least 2 graphs (a size of 1 would be fixed)")
    copied = copy.deepcopy(model).eval()
    scorer = (GATScorer(copied) if kind == "logits" else FusionScorer(copied)).eval()
    node_input = scorer.model.node_input if kind == "logits" else scorer.model.autoencoder.node_input
    node_input.validate_inputs = False
    nodes, edges, graphs, width = (torch.export.Dim("nodes", min=1), torch.export.Dim("edges", min=1),
                                   torch.export.Dim("graphs", min=1), torch.export.Dim("width", min=1))
    shapes = {"x": {0: nodes}, "node_id": {0: nodes}, "edge_index": {1: edges}, "edge_attr": {0: edges},
              "batch": {0: nodes}, "ptr": {0: graphs + 1}, "node_slots": {0: width}}
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with torch.no_grad(), warnings.catch_warnings():
            # torch's own pytree deprecation, raised while it copies its graph: nothing a user can change
            warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)", category=FutureWarning)
            program = torch.export.export(scorer, scorer_inputs(example_batch), dynamic_shapes=shapes)
            tmp = out.with_name(f".{out.name}.{scratch_tag()}.tmp.pt2")  # two exports to one --out: their own
            try:
                torch._inductor.aoti_compile_and_package(program, package_path=str(tmp))
                tmp.replace(out)
            finally:
                tmp.unlink(missing_ok=True)
    finally:
        torch.set_num_threads(before)
    return out


EXAMPLE_WINDOWS = 64  # graphs in the traced example batch (a typical batch: AOT tunes its kernels to these sizes)


def example_batch(vocab: list[int], window: int, label_threshold: float = 0.0, seed: int = 0):
    """A batch of :data:`EXAMPLE_WINDOWS` window graphs to trace an export with, built from
    synthesized messages (no recording needed).

    The messages look like bus traffic: each window cycles through 20-40 % of its length in
    distinct IDs (periodic senders, a tenth of the slots shuffled), drawn from ``vocab`` and
    three IDs outside it, with 1 ms gaps and random payloads, and go through
    :func:`kdkit.data.graphs.build_graphs` with the checkpoint's window and label threshold: the
    tensors have exactly the kdkit graph layout. The example's sizes matter beyond shape: the
    AOT compiler tunes its kernels to them (an example of 4 random windows of up to 100 IDs gave
    a package 2.5-3x slower on real windows of ~25 IDs). The sizes (nodes, edges, graphs, widest
    graph) are all different and above 1, so torch.export keeps each a dynamic dimension. Works
    for any checkpoint, also those written before kdkit stored anything about examples.
    """
    rng = np.random.default_rng(seed)
    top, known = max(vocab, default=0x100), set(vocab)
    # three IDs outside the vocabulary: standard ones above its largest, else extended ones (a table's IDs are valid)
    ids = itertools.chain(range(top + 1, MAX_STANDARD_ID + 1), (i | EXTENDED_ID_FLAG for i in range(0x800, MAX_CAN_ID)))
    pool = np.array([*vocab, *itertools.islice((i for i in ids if i not in known), 3)], np.uint32)
    lo = min(len(pool), max(2, window // 5))
    hi = min(len(pool), max(lo + 1, 2 * window // 5))
    for _ in range(64):
        ids = []
        for _ in range(EXAMPLE_WINDOWS):
            k = int(rng.integers(lo, hi + 1))  # distinct IDs in this window
            seq = np.resize(rng.choice(pool, size=k, replace=False), window)  # each sender in turn
            moved = rng.random(window) < 0.1
            seq[moved] = rng.permutation(seq[moved])
            ids.append(seq)
        starts = np.arange(EXAMPLE_WINDOWS, dtype=np.int64) * window
        can_id = np.concatenate(ids)
        n = can_id.size
        msgs = Messages(timestamp=np.arange(n) * 1e-3, can_id=can_id, dlc=np.full(n, 8, np.uint8),
                        payload=rng.integers(0, 256, (n, 8), dtype=np.uint8), label=np.zeros(n, np.uint8),
                        source="<synthesized example>", attack_type="attack-free")
        gs = build_graphs(msgs, IdVocab.from_list(vocab), window, window, label_threshold, starts=starts)
        sizes = (int(gs.num_nodes.sum()), int(gs.num_edges.sum()), len(gs), int(gs.num_nodes.max()))
        if len(set(sizes)) == len(sizes) and min(sizes) > 1:
            return collate_indices(gs, list(range(len(gs))))
    raise ValueError(f"no example batch with distinct sizes for window {window} and {len(vocab)} IDs; "
                     "export needs a window of at least 3 messages")


def export_checkpoint(checkpoint: str | Path, out: str | Path | None = None, threads: int = 1) -> dict:
    """Export a kdkit GAT checkpoint; returns a summary (paths, seconds, parameters).

    Needs only the checkpoint: it must record its graph settings and carry a vocabulary that
    fits its model; the example graphs are synthesized from that vocabulary with those settings
    (:func:`example_batch`), and the metadata beside the package carries them (and the
    threshold, a calibrated one included) to the gateway. ``threads``: see :func:`export_model`.
    """

    checkpoint = Path(checkpoint)
    ckpt = load_checkpoint(checkpoint)
    config = ckpt.get("model_config") or {}
    kind = config.get("kind")
    if kind not in ("gat", "fusion"):
        raise ValueError(f"{checkpoint} is a {kind} checkpoint: {UNSUPPORTED}")
    if kind == "fusion" and not config.get("shared_encoder"):
        raise ValueError(_fusion_teacher_message(str(checkpoint)))
    out_kind = output_kind(config)
    graph = check_graph_settings(ckpt, checkpoint)
    check_threshold_fitted(ckpt, checkpoint, "exported")
    prov = provenance(ckpt, checkpoint)
    out = Path(out) if out else checkpoint.with_suffix(".pt2")
    model = model_from_checkpoint(ckpt, checkpoint)  # checks the config against the weights first
    check_checkpoint_layout(ckpt, checkpoint, "exported")
    example = example_batch(ckpt["vocab"], int(graph["window"]), float(graph.get("label_threshold") or 0.0))
    # the package, the native weights and the .json are written under temp names and renamed into place
    # one after the other at the end: an export stopped while compiling (a minute) leaves the previous
    # export's three files as they were, not a new package beside an old .json
    tag = scratch_tag()
    meta_path = out.with_suffix(".json")
    staged = {final: final.with_name(f".{final.name}.{tag}.export{final.suffix}")
              for final in (out, native_weights_path(out), meta_path)}
    try:
        t0 = time.perf_counter()
        export_model(model, example, staged[out], threads=threads)
        seconds = time.perf_counter() - t0
        native = native_weights_path(out) if unsupported_reason(model) is None else None
        if native:
            np.savez(staged[native], **NativeGAT.from_model(model.eval()).arrays())
        # the checkpoint's absolute path: the detector's calibrate advice names it, run from anywhere on the machine
        meta = {"checkpoint": str(checkpoint.resolve()), "package": str(out), "package_sha256": file_sha256(staged[out]),
                "inputs": list(INPUTS),
                "inputs_note": "a kdkit batch's tensors; ptr: graph offsets [G+1]; node_slots: any tensor of "
                               "[largest graph's node count, 0] (sizes the max pool); GATv2's self-loops are added inside",
                "output": OUTPUTS[out_kind], "output_kind": out_kind,
                "model_config": ckpt["model_config"], "vocab": ckpt.get("vocab"), "node_features": ckpt.get("node_features"),
                "edge_features": ckpt.get("edge_features"), "threshold": ckpt.get("threshold"), "window": graph["window"],
                "stride": graph["stride"], "label_threshold": graph["label_threshold"],
                "graph_format": prov.get("graph", {}).get("graph_format"), "role": prov.get("role"),
                "calibration": _calibration_note(prov.get("calibration"), prov.get("calibrations")),
                "reading": prov.get("reading"),  # its training data's column mapping: kdkit detect --input reads that layout
                "example": f"{example.num_graphs} graphs synthesized from the checkpoint's vocabulary (no data needed)",
                "threads": threads,
                "native_weights": native.name if native else None,
                "native_weights_sha256": file_sha256(staged[native]) if native else None}  # the detector checks it
        meta["scoring_sha256"] = scoring_digest(meta)  # check_metadata: an edited field is refused, not scored with
        staged[meta_path].write_text(json.dumps(meta, indent=2))
        staged[out].replace(out)
        if native:
            staged[native].replace(native)
        else:  # a stale copy from an earlier export of another model
            native_weights_path(out).unlink(missing_ok=True)
        staged[meta_path].replace(meta_path)
    finally:
        for tmp in staged.values():
            tmp.unlink(missing_ok=True)
    return {"package": str(out), "metadata": str(meta_path), "native_weights": str(native) if native else None,
            "seconds": round(seconds, 1),
            "parameters": sum(p.numel() for p in model.parameters()), "bytes": out.stat().st_size,
            "threshold": ckpt.get("threshold"), "output_kind": out_kind}


def native_weights_path(package: str | Path) -> Path:
    """Where :func:`export_checkpoint` writes a GAT's native weights beside its package: the
    ``.pt2``'s name with ``.npz`` (:class:`kdkit.models.native.NativeGAT`, the detector's engine
    for single windows)."""
    return Path(package).with_suffix(".npz")


def _calibration_note(record: dict | None, history: list | None = None) -> dict | None:
    """The calibration record of a calibrated checkpoint, its files by path and SHA-256 (the README
    promises both in the exported metadata; the per-file counts stay in the checkpoint), and, when
    there was more than one, every calibration's kind, date, fpr and files, oldest first."""
    if not record:
        return None

    def files(rec: dict) -> list[dict]:
        return [{"path": f.get("path"), "sha256": f.get("sha256")} for f in rec.get("files", []) if isinstance(f, dict)]

    note = {**{k: v for k, v in record.items() if k != "files"}, "files": files(record)}
    if history and len(history) > 1:
        note["calibrations"] = [{**{k: r.get(k) for k in ("kind", "date", "fpr", "first_seconds") if k in r},
                                 "files": files(r)} for r in history]
    return note


def load_exported(path: str | Path, tune_allocator: bool = True, validate: bool = True) -> Callable:
    """Load an exported package; returns ``score(batch)`` for a kdkit batch: the GAT's logits
    ``[G, 2]`` or the fusion student's fused score ``[G]``. The function carries
    ``score.output_kind`` (``"logits"`` or ``"score"``, from the ``.json`` beside the package; a
    package exported before the key existed is a GAT's, ``"logits"``) and ``score.threshold``
    (None without the ``.json``): with ``"score"`` a window is an attack when
    ``score(batch) >= score.threshold``, with ``"logits"`` when ``softmax(...)[:, 1]`` is.

    ``validate`` (default) checks each batch's edge and ID ranges first
    (:func:`kdkit.models.scorer.check_batch`, ~15 us): compiled code does not bounds-check its gathers
    gracefully, a bad index would abort the process. The ID range comes from the ``.json`` beside
    the package when present. ``score.run(*tensors)`` calls the package with the scorer's
    inputs directly (:func:`package_runner`). ``tune_allocator`` (default) applies
    :func:`kdkit.training.cpu_speedups.tune_cpu_allocator` (process-wide: freed activations stay in glibc's heap
    for the next batch; ~25 % faster scoring measured on the compiled student;
    ``KDKIT_TUNE_MALLOC=0`` also turns it off)."""

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"exported model {path} does not exist (kdkit export --checkpoint ... --out {path})")
    meta_path = path.with_suffix(".json")
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    check_package(path, meta, meta_path)
    if tune_allocator:
        tune_cpu_allocator()
    run = package_runner(torch._inductor.aoti_load_package(str(path)))
    num_ids = meta["model_config"]["num_ids"] if meta else None

    def score(batch):
        if validate:
            check_batch(batch, num_ids, where=str(path))
        return run(*scorer_inputs(batch))

    score.output_kind = meta.get("output_kind", "logits")
    score.threshold = meta.get("threshold")
    score.run = run
    return score


# the .json fields that decide how a window is built and scored and what alarms: an edit of any of them
# (a vocabulary, a window, a threshold changed by hand) scored with another model's settings, silently
SCORING_KEYS = ("package_sha256", "native_weights_sha256", "model_config", "vocab", "node_features", "edge_features",
                "threshold", "window", "stride", "label_threshold", "graph_format", "output_kind", "reading")


def scoring_digest(meta: dict) -> str:
    """SHA-256 of ``meta``'s :data:`SCORING_KEYS` (canonical JSON), recorded at export as ``scoring_sha256``."""
    fields = {k: meta.get(k) for k in SCORING_KEYS}
    return hashlib.sha256(json.dumps(fields, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def check_metadata(meta: dict, meta_path: Path) -> None:
    """An exported package's ``.json`` must hold what its export wrote in the fields that decide the
    scores (:data:`SCORING_KEYS`): a hand-edited vocabulary, window, stride or threshold was used as
    it stood, scoring every window with settings the model was not exported with (a review,
    2026-12-07: 28 of 160 decisions changed by an edited vocabulary, no warning). Exports before
    ``scoring_sha256`` are not checked.

    Raises:
        ValueError: naming the file, and how to change a threshold or a window the supported way.
    """
    want = meta.get("scoring_sha256")
    if not want:
        return
    digest = scoring_digest(meta)
    if digest != want:
        raise ValueError(f"{meta_path} was changed after kdkit export wrote it: the fields that decide the scores "
                         f"({', '.join(k for k in SCORING_KEYS if k not in ('package_sha256', 'native_weights_sha256'))}) "
                         f"no longer hash to the recorded scoring_sha256 ({digest[:12]}... against {want[:12]}...), so "
                         f"windows would be scored with settings the model was not exported with. Restore the file "
                         f"from the export, or export again; for another threshold pass --threshold (kdkit detect) or "
                         f"calibrate the checkpoint (kdkit calibrate) and export it again")


def check_package(path: Path, meta: dict, meta_path: Path) -> None:
    """The ``.json`` beside a package must be its own export's: its threshold, window and vocabulary
    are what the package is scored with. A ``.pt2`` copied over another (a gateway update that copied
    only the package, a teacher renamed ``student.pt2``) ran with the other's metadata, silently.

    Raises:
        ValueError: the package's SHA-256 is not the one the ``.json`` records (exports before
            2026-12-07 record none and are not checked).
    """
    check_metadata(meta, meta_path)
    want = meta.get("package_sha256")
    if not want:
        return
    digest = file_sha256(path)
    if digest != want:
        files = f"{path.name}, {meta_path.name}{', ' + meta['native_weights'] if meta.get('native_weights') else ''}"
        raise ValueError(f"{path} is not the package {meta_path.name} was exported with (SHA-256 {digest[:12]}..., "
                         f"{meta_path.name} records {want[:12]}...): its threshold, window and vocabulary would be "
                         f"another model's. The files of two exports were mixed (copied apart, or an export "
                         f"stopped between renaming them into place): copy the files of one export together "
                         f"({files}), or export again, kdkit export --checkpoint CHECKPOINT --out {path} "
                         f"({meta_path.name} describes {meta.get('checkpoint') or 'an unnamed checkpoint'})")


def package_runner(program) -> Callable:
    """``run(*tensors)``: a loaded AOTInductor package called with the scorer's positional tensor
    inputs (:data:`~kdkit.models.scorer.INPUTS`), as ``program(*tensors)`` computes it.

    ``AOTICompiledModel.__call__`` parses the package's input and output tree specs from JSON
    and flattens the arguments on every call: ~0.05 ms of a ~0.28 ms single-window call of the
    GAT student on a CPU (measured). Here the specs are parsed once and the tensors go to the
    loader as they are. A package whose inputs are not exactly the scorer's positional tensors
    is called the stock way."""
    loader = program.loader
    in_spec, out_spec = (pytree.treespec_loads(s) for s in loader.get_call_spec())
    positional = pytree.tree_unflatten([None] * in_spec.num_leaves, in_spec)
    if not (isinstance(positional, tuple) and len(positional) == 2 and positional[1] == {}
            and len(positional[0]) == len(INPUTS)):
        return program
    boxed_run, unflatten = loader.boxed_run, pytree.tree_unflatten

    def run(*tensors):
        if len(tensors) != len(INPUTS):
            raise TypeError(f"the exported scorer takes {len(INPUTS)} tensors ({', '.join(INPUTS)}), got {len(tensors)}")
        return unflatten(boxed_run(list(tensors)), out_spec)

    return run
