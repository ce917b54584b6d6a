"""``kdkit export``: a GAT checkpoint's inference pass (:class:`kdkit.models.scorer.GATScorer`) as an
ahead-of-time compiled ``.pt2`` package (torch.export + AOTInductor) with the metadata a
gateway needs to build graphs (vocabulary, feature layout, window, threshold).

    kdkit export --checkpoint runs/x/checkpoints/best.pt --out student.pt2
    score = load_exported("student.pt2"); score(batch)
"""
from __future__ import annotations

import copy
import json
import time
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from kdkit.data.loader import collate_indices
from kdkit.models.scorer import INPUTS, GATScorer, check_batch, scorer_inputs
from kdkit.training.checkpoint import load_checkpoint, model_from_checkpoint, provenance
from kdkit.training.cpu_speedups import tune_cpu_allocator
from kdkit.workflows.run import check_compatible, check_graph_settings, checkpoint_data


def export_model(model: nn.Module, example_batch, out: str | Path) -> Path:
    """Export ``model`` (a GATClassifier, any mode: exported in eval mode) to ``out`` (``.pt2``)
    as a :class:`~kdkit.models.scorer.GATScorer`. ``example_batch``: a kdkit batch of >= 2 graphs."""

    if getattr(model, "config", {}).get("kind") != "gat":
        raise ValueError(f"export supports the GAT classifier, not {getattr(model, 'config', {}).get('kind')!r} "
                         "(the VGAE's anomaly score has data-dependent shapes)")
    if example_batch.num_graphs < 2:
        raise ValueError("export needs an example batch of at least 2 graphs (a size of 1 would be fixed)")
    scorer = GATScorer(copy.deepcopy(model).eval()).eval()
    scorer.model.node_input.validate_inputs = False
    nodes, edges, graphs, width = (torch.export.Dim("nodes", min=1), torch.export.Dim("edges", min=1),
                                   torch.export.Dim("graphs", min=1), torch.export.Dim("width", min=1))
    shapes = {"x": {0: nodes}, "node_id": {0: nodes}, "edge_index": {1: edges}, "edge_attr": {0: edges},
              "batch": {0: nodes}, "ptr": {0: graphs + 1}, "node_slots": {0: width}}
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        program = torch.export.export(scorer, scorer_inputs(example_batch), dynamic_shapes=shapes)
        tmp = out.with_name(f".{out.name}.tmp.pt2")
        try:
            torch._inductor.aoti_compile_and_package(program, package_path=str(tmp))
            tmp.replace(out)
        finally:
            tmp.unlink(missing_ok=True)
    return out


def export_checkpoint(checkpoint: str | Path, out: str | Path | None = None, dataset: str | None = None,
                      data_root: str | None = None) -> dict:
    """Export a kdkit GAT checkpoint; returns a summary (paths, seconds, parameters).

    The checkpoint must be a kdkit GAT checkpoint that records its graph settings; the example
    graphs are built with them (and must share its vocabulary and feature layout), and the
    metadata beside the package carries them to the gateway.
    """

    checkpoint = Path(checkpoint)
    ckpt = load_checkpoint(checkpoint)
    kind = (ckpt.get("model_config") or {}).get("kind")
    if kind != "gat":
        raise ValueError(f"{checkpoint} is a {kind} checkpoint: export supports the GAT classifier (the VGAE's anomaly "
                         "score has data-dependent shapes)")
    graph = check_graph_settings(ckpt, checkpoint)
    prov = provenance(ckpt, checkpoint)
    out = Path(out) if out else checkpoint.with_suffix(".pt2")
    model = model_from_checkpoint(ckpt, checkpoint)  # checks the config against the weights first
    data = checkpoint_data(ckpt, dataset, data_root)
    check_compatible(ckpt, data, "exported")
    gs = data.splits["val"] if len(data.splits["val"]) >= 2 else data.splits["train"]
    if len(gs) < 2:
        raise ValueError(f"dataset {data.name!r} has fewer than 2 windows of {graph['window']} messages to trace the "
                         "export with; give --dataset with longer recordings")
    example = collate_indices(gs, list(range(min(8, len(gs)))))
    t0 = time.perf_counter()
    export_model(model, example, out)
    seconds = time.perf_counter() - t0
    meta = {"checkpoint": str(checkpoint), "package": str(out), "inputs": list(INPUTS),
            "inputs_note": "a kdkit batch's tensors; ptr: graph offsets [G+1]; node_slots: any tensor of "
                           "[largest graph's node count, 0] (sizes the max pool); GATv2's self-loops are added inside",
            "output": "logits [graphs, 2]; attack probability = softmax(...)[:, 1]",
            "model_config": ckpt["model_config"], "vocab": ckpt.get("vocab"), "node_features": ckpt.get("node_features"),
            "edge_features": ckpt.get("edge_features"), "threshold": ckpt.get("threshold"), "window": graph["window"],
            "stride": graph["stride"], "label_threshold": graph["label_threshold"],
            "graph_format": prov.get("graph", {}).get("graph_format"), "role": prov.get("role")}
    meta_path = out.with_suffix(".json")
    tmp = meta_path.with_name(f".{meta_path.name}.tmp")
    tmp.write_text(json.dumps(meta, indent=2))
    tmp.replace(meta_path)
    return {"package": str(out), "metadata": str(meta_path), "seconds": round(seconds, 1),
            "parameters": sum(p.numel() for p in model.parameters()), "bytes": out.stat().st_size}


def load_exported(path: str | Path, tune_allocator: bool = True, validate: bool = True) -> Callable:
    """Load an exported package; returns ``score(batch) -> logits`` for a kdkit batch.

    ``validate`` (default) checks each batch's edge and ID ranges first
    (:func:`kdkit.models.scorer.check_batch`, ~15 us): compiled code does not bounds-check its gathers
    gracefully, a bad index would abort the process. The ID range comes from the ``.json`` beside
    the package when present. ``tune_allocator`` (default) applies
    :func:`kdkit.training.cpu_speedups.tune_cpu_allocator` (process-wide: freed activations stay in glibc's heap
    for the next batch; ~25 % faster scoring measured on the compiled student;
    ``KDKIT_TUNE_MALLOC=0`` also turns it off)."""

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"exported model {path} does not exist (kdkit export --checkpoint ... --out {path})")
    if tune_allocator:
        tune_cpu_allocator()
    program = torch._inductor.aoti_load_package(str(path))
    meta_path = path.with_suffix(".json")
    num_ids = json.loads(meta_path.read_text())["model_config"]["num_ids"] if meta_path.is_file() else None

    def score(batch):
        if validate:
            check_batch(batch, num_ids, where=str(path))
        return program(*scorer_inputs(batch))

    return score
