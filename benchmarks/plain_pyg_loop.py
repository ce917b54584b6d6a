"""The training loop a PyG user writes: the baseline every kdkit training-speed figure is compared with.

A ``torch_geometric.loader.DataLoader`` over a list of ``Data`` (PyG collates every batch), the
model, AdamW, ``loss.backward()``, ``optimizer.step()``. Nothing else: no gradient clipping, no
scheduler, no augmentation, no loss read to the host per step, fp32. The model is kdkit's own
(same class, preset and seeded initial weights as ``kdkit train``), so the loop and the trainer
compute the same loss on the same batch (``tests/test_bench_train.py`` checks it), set to the
stock PyG path (``set_attention_kernel(model, "stock")``: PyG's GATv2Conv attention, torch's
dropout masks, PyG's pooling) as ``kdkit bench train`` sets it for its plain side: kdkit's fused
CPU kernels are what the trainer brings, not what a PyG user's loop runs. Class weights follow
the run config's ``class_weighting``, as in the trainer.

    python benchmarks/plain_pyg_loop.py --model gat --type student --dataset hcrl_sa --steps 40

``kdkit bench train`` imports :func:`plain_loader` and :func:`plain_step` from this file and times
them against the Fabric trainer, each variant in fresh processes, interleaved.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
import torch.nn.functional as F
from torch_geometric.loader import DataLoader


def plain_loader(data_list: list, batch_size: int, seed: int = 0) -> DataLoader:
    """Shuffled batches of a list of ``torch_geometric.data.Data``."""
    return DataLoader(data_list, batch_size=batch_size, shuffle=True, generator=torch.Generator().manual_seed(seed))


def plain_optimizer(model: torch.nn.Module, lr: float = 2e-3, weight_decay: float = 0.01) -> torch.optim.Optimizer:
    """AdamW over every parameter (the default a user writes)."""
    return torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)


def plain_loss(model: torch.nn.Module, batch, class_weight: torch.Tensor | None = None) -> torch.Tensor:
    """Cross-entropy of a classifier's logits (class-weighted when given); an autoencoder's own loss."""
    if getattr(model, "objective", "classify") == "classify":
        return F.cross_entropy(model(batch), batch.y, weight=class_weight)
    return model.loss(batch)["loss"]


def plain_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, batch,
               class_weight: torch.Tensor | None = None) -> torch.Tensor:
    """One optimizer step; returns the (still attached) loss without reading it to the host."""
    optimizer.zero_grad(set_to_none=True)
    loss = plain_loss(model, batch, class_weight)
    loss.backward()
    optimizer.step()
    return loss


def main(argv: list[str] | None = None) -> dict:
    from kdkit.config import make_config
    from kdkit.models.layers import set_attention_kernel
    from kdkit.workflows.run import build_student_or_teacher, class_weights, load_data, vgae_train_sets

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="gat", choices=["gat", "vgae"])
    p.add_argument("--type", default="student", choices=["teacher", "student"])
    p.add_argument("--dataset", default="synthetic")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--burn-in", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    cfg = make_config(model=args.model, type=args.type, dataset=args.dataset, batch_size=args.batch_size, seed=0)
    data = load_data(cfg)
    train_set = data.splits["train"] if cfg.model == "gat" else vgae_train_sets(data)[0]
    model = build_student_or_teacher(cfg, data).train()
    set_attention_kernel(model, "stock")  # the loop a PyG user writes runs PyG's path, not kdkit's kernels
    weight = class_weights(train_set) if cfg.model == "gat" and cfg.class_weighting else None
    optimizer = plain_optimizer(model, cfg.learning_rate, cfg.weight_decay)
    loader, times, cpu, graphs = plain_loader(train_set.to_data_list(), cfg.batch_size, cfg.seed), [], [], 0
    batches = iter(loader)
    for i in range(args.burn_in + args.steps):
        t, c = time.perf_counter(), time.process_time()
        try:
            batch = next(batches)
        except StopIteration:
            batches = iter(loader)
            batch = next(batches)
        plain_step(model, optimizer, batch, weight)
        if i >= args.burn_in:
            times.append(time.perf_counter() - t)
            cpu.append(time.process_time() - c)
            graphs += batch.num_graphs
    result = {"loop": "plain PyG", "model": args.model, "type": args.type, "dataset": args.dataset,
              "batch_size": args.batch_size, "steps": args.steps, "attention": "stock",
              "class_weighted": weight is not None, "graphs_per_s": round(graphs / sum(times), 1),
              "graphs_per_cpu_s": round(graphs / max(sum(cpu), 1e-9), 1),
              "step_ms_median": round(1000 * statistics.median(times), 2)}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
