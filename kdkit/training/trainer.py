"""The Lightning Fabric trainer: one readable loop for teachers and (distilled) students.

In the style of Fabric's ``build_your_own_trainer``: ``Fabric(...)`` -> ``launch`` ->
``setup_dataloaders`` -> ``setup`` -> epochs of ``training_step`` / ``fabric.backward`` /
clip / ``optimizer.step`` / ``scheduler.step`` (per optimizer step) -> validation ->
early stopping -> atomic checkpoints (``best.pt``, ``last.pt``) through ``fabric.save``.

    from kdkit.training.trainer import FabricTrainer
    trainer = FabricTrainer(cfg, run_dir)
    result = trainer.fit(task, train_set, val_set, resume="runs/x/checkpoints/last.pt")

A checkpoint is a plain dict of tensors and JSON-like values, so it loads with
``torch.load(..., weights_only=True)``: it cannot run code. It carries the model config,
ID vocabulary, feature layout and threshold, so ``--teacher PATH`` needs nothing else.
"""
from __future__ import annotations

import logging
import math
import os
import random
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from lightning_fabric import Fabric
from lightning_fabric.loggers import CSVLogger, TensorBoardLogger
from lightning_fabric.strategies import DDPStrategy, SingleDeviceStrategy
from lightning_fabric.utilities.imports import _IS_INTERACTIVE

from kdkit.config import TrainConfig
from kdkit.data.graphs import GraphSet
from kdkit.data.loader import _Collate, eval_batch_size, graph_loader
from kdkit.data.progress import progress_bar
from kdkit.models.layers import set_attention_kernel, takes_batch_self_loops, with_self_loops
from kdkit.training.checkpoint import CHECKPOINT_FORMAT, load_checkpoint
from kdkit.training.cpu_speedups import (
    clip_grad_norm_cpu,
    make_optimizer,
    tune_cpu_allocator,
    upgrade_optimizer_state,
    upgrade_scheduler_state,
)
from kdkit.training.memory import is_oom, phase_peak, release_memory
from kdkit.training.optim import make_scheduler, scaled_learning_rate
from kdkit.training.precision import choose_precision, resolve_accelerator
from kdkit.training.preemption import Preempted, StopRequest
from kdkit.training.task import Task

log = logging.getLogger(__name__)


COMPILE_AUTO_MIN_STEPS = 1500  # compile "auto": a GAT on CPU with at least this many optimizer steps


# ----------------------------------------------------------------------------- trainer
@dataclass
class FitResult:
    best_path: Path
    last_path: Path
    best_metric: float
    epochs_run: int
    history: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    oom_events: list[dict] = field(default_factory=list)
    final_batch_size: int = 0
    resumed_from: str | None = None      # the checkpoint a resumed fit continued from
    resumed_at_epoch: int | None = None  # the first epoch it trained (0-based)
    resumed_at_batch: int = 0            # loader batches of that epoch the checkpoint had trained already
    seconds_before: float = 0.0          # training seconds of the earlier attempts a resumed fit continues


STILL_IMPROVING = 0.01  # a validation loss that fell by more than this share in the last epoch was still falling


def convergence_note(history: list[dict], epochs: int, key: str = "val_loss") -> str | None:
    """A warning when training ran out of epochs while still learning, else None.

    Training stopped at its epoch limit (``len(history) == epochs``, not early stopping), the
    last epoch's validation loss is the lowest of the run and it fell by more than
    :data:`STILL_IMPROVING` of the previous epoch's: the model had not converged, and its test
    results understate what it learns with more epochs (measured on hcrl_sa: a VGAE student's
    validation loss over 5 epochs 3.27, 1.58, 1.18, 1.09, 1.07, and 0.78 after 15).
    None for fewer than two epochs or a history without that key.
    """
    losses = [float(h[key]) for h in history if h.get(key) is not None]
    if len(history) != epochs or len(losses) != len(history) or len(losses) < 2:
        return None
    last, prev = losses[-1], losses[-2]
    if not (math.isfinite(last) and math.isfinite(prev)) or last > min(losses) or prev <= 0:
        return None
    fall = (prev - last) / prev
    if fall <= STILL_IMPROVING:
        return None
    return (f"still learning when training stopped: {key} fell {100 * fall:.1f} % in the last of {epochs} epochs "
            f"({prev:.4g} -> {last:.4g}); test results understate the model, train longer (more epochs: --epochs, "
            f"or a notebook's epochs; early stopping ends a run when it stops improving)")


def _schedule_exhausted(scheduler) -> bool:
    """OneCycleLR raises when stepped past ``total_steps``; the extra optimizer steps of an
    OOM back-off then keep its final learning rate instead."""
    total = getattr(scheduler, "total_steps", None)
    return total is not None and scheduler.last_epoch >= total


# Lightning's warning when an ``srun`` binary is on PATH but the process was not started by it
SRUN_WARNING = r"The `srun` command is available on your system but is not used"


class _StartedRanksDDP(DDPStrategy):
    """DDP without a launcher where the ranks were started outside Fabric, in an interactive process.

    Fabric refuses its subprocess launcher in a notebook kernel (``_IS_INTERACTIVE``), even when
    the cluster environment says the processes exist already and the launcher would start
    nothing; without a launcher ``Fabric.launch()`` just forms the process group.
    """

    def _configure_launcher(self) -> None:
        super()._configure_launcher()
        if self.cluster_environment is not None and self.cluster_environment.creates_processes_externally:
            self._launcher = None


@contextmanager
def _srun_warning_outside_slurm():
    """Silence Lightning's "srun is available but is not used" outside a SLURM job.

    Lightning warns whenever an ``srun`` binary is on PATH and the process was not started by
    it: on a login node or a workstation with the SLURM client installed, on every run. The
    hint matters inside a job (``SLURM_JOB_ID`` set), where a missing ``srun`` hangs a
    multi-process run; there the warning stays. Only that message is filtered.
    """
    with warnings.catch_warnings():
        if "SLURM_JOB_ID" not in os.environ:
            warnings.filterwarnings("ignore", message=SRUN_WARNING)
        yield


LOSS_READ_EVERY = 20  # optimizer steps between reads of the training loss to the host


class _StepLosses:
    """An epoch's training losses, kept on the device.

    ``float(loss)`` waits for the device to finish the step; once per step it stalls a GPU's
    queue. The losses are read every ``every`` steps (the progress bar, and the check that they
    are finite: a non-finite loss raises ``FloatingPointError`` naming its step and components)
    and at the end of the epoch (their mean, :meth:`mean`).
    """

    def __init__(self, every: int = LOSS_READ_EVERY):
        self.every, self.values, self._unread = every, [], []
        self.latest: float | None = None  # the most recent loss read

    def add(self, loss: torch.Tensor, parts: dict, step: int) -> bool:
        """Keep one step's detached loss; True when this call read the unread ones."""
        self.values.append(loss)
        self._unread.append((step, parts))
        if len(self._unread) < self.every:
            return False
        self.read()
        return True

    def read(self) -> None:
        """Read the unread losses to the host (one device sync) and check that they are finite."""
        if not self._unread:
            return
        recent = torch.stack(self.values[-len(self._unread):]).double().cpu()
        bad = (~torch.isfinite(recent)).nonzero()
        if len(bad):
            i = int(bad[0])
            step, parts = self._unread[i]
            components = {k: float(v) for k, v in parts.items()}
            raise FloatingPointError(f"training loss became {float(recent[i])} at step {step} "
                                     f"(components {components}); lower the learning rate")
        self.latest = float(recent[-1])
        self._unread.clear()

    def mean(self) -> float:
        """The mean loss of the epoch's steps (0.0 without steps), read to the host."""
        self.read()
        return float(torch.stack(self.values).double().mean()) if self.values else 0.0


class FabricTrainer:
    """Train a :class:`Task` with Lightning Fabric.

    Args:
        cfg: the run's TrainConfig (precision, devices, epochs, patience, ...).
        run_dir: where checkpoints, ``fabric_training.log`` and CSV metrics go.
        progress: show a progress bar per epoch on rank zero (default True; a line a minute in a log).
        on_epoch_end: optional callback ``f(record: dict)`` (the widget's live plot).
        should_stop: optional ``f() -> bool`` checked after every epoch; True ends training
            cleanly (checkpoints stay valid), e.g. the widget's Stop button.
        stop: asked after every loader batch whether the cluster wants the job to stop (time
            limit, preemption); when it does, ``last.pt`` is written at that step and
            :class:`~kdkit.training.preemption.Preempted` raised. Default: a
            :class:`~kdkit.training.preemption.StopRequest` from ``$KDKIT_STOP_FILE``.
    """

    def __init__(self, cfg: TrainConfig, run_dir: str | Path, progress: bool = True,
                 on_epoch_end: Callable[[dict], None] | None = None, should_stop: Callable[[], bool] | None = None,
                 stop: StopRequest | None = None):

        self.cfg, self.run_dir, self.progress, self.on_epoch_end = cfg, Path(run_dir), progress, on_epoch_end
        self.should_stop = should_stop
        self.stop = stop if stop is not None else StopRequest()
        accelerator = resolve_accelerator(cfg.accelerator)
        self.precision = choose_precision(cfg.precision, accelerator)
        loggers = [CSVLogger(str(self.run_dir), name="logs", version="")]
        try:
            import tensorboard  # noqa: F401

            loggers.append(TensorBoardLogger(str(self.run_dir), name="tb", version=""))
        except ImportError:
            pass
        strategy = cfg.strategy
        if strategy == "ddp" and accelerator == "cpu":

            strategy = DDPStrategy(process_group_backend="gloo")
        if cfg.strategy in ("auto", "ddp") and cfg.devices * cfg.num_nodes > 1 and _IS_INTERACTIVE:
            # a notebook kernel whose ranks kdkit started (kdkit.training.spawn_ranks): Fabric would pick
            # its fork launcher here, or refuse any launcher, though every rank exists already
            strategy = _StartedRanksDDP(process_group_backend="gloo" if accelerator == "cpu" else None)
        with _srun_warning_outside_slurm():  # Lightning checks for srun while it picks the cluster environment
            self.fabric = Fabric(accelerator=accelerator, devices=cfg.devices, num_nodes=cfg.num_nodes,
                                 strategy=strategy, precision=self.precision, loggers=loggers)
        self.batch_size = cfg.batch_size
        self.oom_events: list[dict] = []

    # -- logging to run_dir/fabric_training.log on rank zero
    def _setup_logging(self) -> None:
        if self.fabric.global_rank != 0:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(self.run_dir / "fabric_training.log")
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        self._handler = handler

    def _checkpoint_state(self, task: Task, optimizer, scheduler, epoch: int, step: int, best: float, bad: int,
                          history: list, extra: dict, best_tiebreak: float = math.inf) -> dict:
        state = {"format": CHECKPOINT_FORMAT, "model": task.model.state_dict(),
                 "kd": task.kd.state_dict() if task.kd is not None else {},
                 "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "epoch": epoch, "step": step,
                 "rng": torch.get_rng_state(), "rng_other": _other_rng_states(self.fabric.device), "best_metric": best, "best_tiebreak": best_tiebreak, "bad_epochs": bad,
                 "history": history, "batch_size": self.batch_size, "model_config": task.model.config, "train_config": self.cfg.to_dict(),
                 **extra}
        if self.fabric.world_size > 1:
            # every rank's generators (dropout masks, the loader's seed draw): rank zero's alone, restored on every
            # rank, made a resumed DDP run differ from the uninterrupted one
            state["rng_ranks"] = self._gather({"rng": state["rng"], "rng_other": state["rng_other"]})
        scaler = self.fabric.strategy.precision.state_dict()  # 16-mixed: the GradScaler's; {} otherwise
        if scaler:
            state["loss_scaler"] = scaler
        if isinstance(state.get("provenance"), dict):  # the seconds of every attempt so far (TRAIN_SECONDS)
            state["provenance"] = {**state["provenance"],
                                   TRAIN_SECONDS: self._seconds_before + (time.perf_counter() - self._t0)}
        return state

    def _save(self, state: dict, path: Path) -> None:
        """Atomic save on rank zero: Fabric writes a temp file, then it is renamed."""
        tmp = path.with_name(f".{path.name}.tmp")
        try:
            self.fabric.save(tmp, state)
        except BaseException:
            if self.fabric.global_rank == 0:
                tmp.unlink(missing_ok=True)  # no partial checkpoint left behind
            raise
        self.fabric.barrier()
        if self.fabric.global_rank == 0:
            tmp.replace(path)

    def _step(self, task: Task, model, optimizer, scheduler, batch) -> tuple[torch.Tensor, dict]:
        """One optimizer step; returns the detached loss and its components, on the device (no
        host read here: :class:`_StepLosses` reads and checks them every few steps)."""
        # Through the Fabric module's forward (= Task.forward = training_loss): that applies the
        # precision plugin's autocast and, under DDP, the wrapper that synchronises gradients.
        loss, parts = model(batch)
        self.fabric.backward(loss)
        if self.cfg.grad_clip > 0:
            strategy = self.fabric.strategy
            if self.fabric.device.type == "cpu" and isinstance(strategy, (SingleDeviceStrategy, DDPStrategy)):
                # what Fabric's clip_gradients does for these strategies, with the cheaper CPU norm
                strategy.precision.unscale_gradients(optimizer)
                clip_grad_norm_cpu(strategy.precision.main_params(optimizer), self.cfg.grad_clip)
            else:
                self.fabric.clip_gradients(model, optimizer, max_norm=self.cfg.grad_clip, error_if_nonfinite=False)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if not _schedule_exhausted(scheduler):
            scheduler.step()
        return loss.detach(), parts

    def _chunk(self, gs: GraphSet, idx: torch.Tensor):
        """Graphs ``idx`` as a batch on the device, keeping the indices for a further back-off."""
        collate = getattr(self, "_collate", None) or _CollateWithIndex(gs)  # prepare's: maybe adds self-loops
        return self._to_device(collate(idx.tolist()))

    def _to_device(self, batch):
        """Fabric's ``to_device`` copies a PyG Batch blocking (it passes ``non_blocking`` to bare
        tensors only); from the loader's pinned memory the copy need not block."""
        if self.fabric.device.type == "cuda":
            return batch.to(self.fabric.device, non_blocking=True)
        return batch

    def _run_batch(self, task, model, optimizer, scheduler, gs: GraphSet, batch) -> list[tuple[torch.Tensor, dict]]:
        """One loader batch; on out-of-memory halve the batch size and redo the failed part in chunks.

        Every chunk is one optimizer step on exactly its graphs (its loss is the loss of that
        chunk alone), and a failed chunk is redone in halves, so each graph of the batch is
        trained on once: nothing skipped, nothing repeated. Below ``min_batch_size`` it stops.
        """
        idx = batch.graph_idx.cpu() if hasattr(batch, "graph_idx") else None
        if idx is None or idx.numel() <= self.batch_size:
            first, todo = batch, []
        else:  # the loader still yields batches of the size before an earlier back-off
            first, todo = None, list(idx.split(self.batch_size))
        del batch
        out = []
        while first is not None or todo:
            chunk = first if first is not None else self._chunk(gs, todo.pop(0))
            first = None
            failed = False
            try:
                out.append(self._step(task, model, optimizer, scheduler, chunk))
            except (RuntimeError, MemoryError) as err:
                if not is_oom(err) or idx is None:
                    raise
                if chunk.num_graphs <= max(self.cfg.min_batch_size, 1):
                    raise RuntimeError(f"out of memory even at batch size {chunk.num_graphs} (min_batch_size="
                                       f"{self.cfg.min_batch_size}); use a smaller model, a smaller window or a device "
                                       "with more memory") from err
                if self.fabric.world_size > 1:
                    # one rank's back-off takes more, smaller steps than the others: their gradient all-reduces
                    # no longer pair up and every rank waits for ever (a hang, not an error)
                    raise RuntimeError(
                        f"out of memory at batch size {chunk.num_graphs} on rank {self.fabric.global_rank} of a "
                        f"{self.fabric.world_size}-process run: the batch-size back-off runs in one process only (each "
                        f"rank would take other steps than the others, and they would wait for each other for ever); "
                        f"train again with --batch-size {max(chunk.num_graphs // 2, 1)}, or let --optimize-batch-size "
                        "choose one") from err
                failed = True  # recover below, outside the except block: its traceback pins the step's tensors
            if not failed:
                continue
            optimizer.zero_grad(set_to_none=True)
            n = chunk.num_graphs
            self.batch_size = max(n // 2, self.cfg.min_batch_size, 1)
            rest = torch.cat([chunk.graph_idx.cpu(), *todo])  # the failed chunk and everything after it
            del chunk
            release_memory()
            event = {"epoch": getattr(self, "_epoch", 0), "from": n, "to": self.batch_size}
            self.oom_events.append(event)
            log.warning("out of memory at batch size %d: continuing with %d", n, self.batch_size)
            todo = list(rest.split(self.batch_size))
        return out

    def prepare(self, task: Task, train_set: GraphSet, val_set: GraphSet | None = None):
        """Loaders, the fast path and ``fabric.setup``: ``(train_loader, val_loader, task_m, optimizer)``.

        What it does beyond the plain loop, all documented where it lives: on CPU the glibc
        allocator keeps freed tensors (:func:`~kdkit.training.cpu_speedups.tune_cpu_allocator`);
        a GAT classifier's batches carry their self-loops
        (:func:`~kdkit.models.layers.with_self_loops`, so the layers add none); with ``compile`` the model (and a
        GAT teacher) is compiled with ``nn.Module.compile`` (parameters and ``state_dict`` unchanged); AdamW is
        fused (:func:`~kdkit.training.cpu_speedups.make_optimizer`).
        """
        cfg, fabric = self.cfg, self.fabric
        on_cpu = fabric.device.type == "cpu"
        if on_cpu:
            tune_cpu_allocator()
        compile_model = self.use_compile(task, train_set)
        # a GAT classifier's self-loops come with each batch (the layers then add none): the
        # compiled gather writes them as it copies the rows (~0.6 ms a student step less than the
        # layers' remove/add, eager), and under compile the data-dependent removal stays out of
        # the graph. A reconstruction loss reads the batch's edges, so it gets none.
        loops = task.objective == "classify" and takes_batch_self_loops(task.model, task.teacher)
        transform = with_self_loops if loops else None
        train_loader = graph_loader(train_set, self.batch_size, shuffle=True, seed=cfg.seed, node_budget=cfg.node_budget,
                                    num_workers=cfg.num_workers, prefetch_factor=cfg.prefetch_factor,
                                    pin_memory=fabric.device.type == "cuda", rank=fabric.global_rank, world_size=fabric.world_size)
        self._collate = _CollateWithIndex(train_set, transform, self_loops=loops)
        train_loader.collate_fn = self._collate
        self._train_sampler = train_loader.batch_sampler
        # train batches are moved by self._to_device (non-blocking from pinned memory), val batches by Fabric
        train_loader = fabric.setup_dataloaders(train_loader, use_distributed_sampler=False, move_to_device=False)
        val_loader = None
        if val_set is not None:
            val_loader = graph_loader(val_set, eval_batch_size(fabric.device), shuffle=False, num_workers=0,
                                      rank=fabric.global_rank, world_size=fabric.world_size, transform=transform,
                                      pad=False)  # every validation window counted once over the ranks
            val_loader = fabric.setup_dataloaders(val_loader, use_distributed_sampler=False)
        set_attention_kernel(task.model, cfg.attention)
        if cfg.attention == "fused" and not on_cpu:
            log.warning("attention: fused runs on CPU only; on %s the GATv2 layers take PyG's attention",
                        fabric.device.type)
        if task.teacher is not None:
            set_attention_kernel(task.teacher, cfg.attention)
        if compile_model:  # nn.Module.compile: the module stays itself (same parameters, state_dict keys)
            task.model.compile(dynamic=True)
            if task.teacher is not None and task.teacher.objective == "classify":
                # a GAT teacher's forward is most of a distilled student's step (~70 % on CPU)
                task.teacher.compile(dynamic=True)
        lr = scaled_learning_rate(cfg, fabric.world_size)
        if fabric.world_size > 1:
            log.info("%d processes x batch %d: peak learning rate %.3g (%s scaling of %.3g)", fabric.world_size,
                     self.batch_size, lr, cfg.lr_scaling, cfg.learning_rate)
        optimizer = make_optimizer(task.parameters(), cfg, fabric.device, lr=lr,
                                   grad_scaler=getattr(fabric.strategy.precision, "scaler", None) is not None)
        task_m, optimizer = fabric.setup(task, optimizer)
        if task.teacher is not None:
            task.teacher.to(fabric.device)
        return train_loader, val_loader, task_m, optimizer

    def use_compile(self, task: Task, train_set: GraphSet) -> bool:
        """``compile`` true/false as given; ``"auto"``: on for a GAT on CPU with PyG's attention
        (``attention: stock``) when the run has at least ``COMPILE_AUTO_MIN_STEPS`` optimizer
        steps (compiling costs 10-15 s once; it fuses the per-edge arithmetic, ~1.5x). With the
        fused attention kernel (the default on CPU) that work is already fused: compiled, the
        1-head student's step is ~1.2x its eager one (``kdkit bench train``, AMD EPYC: 6,031-6,650
        against 4,696-5,581 graphs/s), which repays the compiling only after several thousand
        steps, and the teacher's is no faster (418-434 against 413-434), so ``"auto"`` leaves it
        off; ``compile: true`` turns it on."""
        cfg = self.cfg
        if cfg.compile != "auto":
            return bool(cfg.compile)
        per_rank = math.ceil(len(train_set) / max(self.fabric.world_size, 1))
        steps = cfg.epochs * math.ceil(per_rank / max(self.batch_size, 1))
        fused = cfg.attention != "stock"
        on = (self.fabric.device.type == "cpu" and task.objective == "classify" and steps >= COMPILE_AUTO_MIN_STEPS
              and not fused)
        log.info("compile auto: %s (%s, %s, %d planned steps, attention %s)", "on" if on else "off",
                 self.fabric.device.type, task.kind, steps, cfg.attention)
        return on

    def fit(self, task: Task, train_set: GraphSet, val_set: GraphSet, resume: str | Path | None = None,
            checkpoint_extra: dict | None = None, keep_group: bool = False) -> FitResult:
        """Train until ``epochs`` or early stopping; returns the best/last checkpoint paths.

        ``keep_group``: under DDP, keep the process group after training (the caller then
        scores the test sets on every rank and calls :meth:`close`); by default the ranks leave
        it together at the end.
        """
        cfg, fabric = self.cfg, self.fabric
        fabric.launch()
        fabric.seed_everything(cfg.seed, workers=True)
        self._setup_logging()
        ckpt_dir = self.run_dir / "checkpoints"
        best_path, last_path = ckpt_dir / "best.pt", ckpt_dir / "last.pt"
        if fabric.global_rank == 0:
            ckpt_dir.mkdir(parents=True, exist_ok=True)
            for stale in ckpt_dir.glob(".*.tmp*"):  # a temp file of a killed run: never a valid checkpoint
                stale.unlink(missing_ok=True)
        fabric.barrier()

        train_loader, val_loader, task_m, optimizer = self.prepare(task, train_set, val_set)
        total_steps = cfg.epochs * len(train_loader)
        scheduler = make_scheduler(optimizer, cfg, total_steps)

        metric, mode = task.monitor
        tiebreak = task.tiebreak  # equal F1 (it saturates at 1.0 early): the lower validation loss wins
        sign = 1.0 if mode == "max" else -1.0
        start_epoch, step, best, bad, history = 0, 0, -math.inf, 0, []
        best_tie = math.inf
        resumed_at = None
        position = None  # where in its epoch a mid-epoch checkpoint stopped (None: at an epoch's end)
        self._seconds_before = 0.0  # training seconds of earlier attempts (a resumed fit: its checkpoint's)
        if resume:
            ck = load_checkpoint(resume)
            check_resumable(ck, task, resume)
            task.model.load_state_dict(ck["model"])
            if task.kd is not None and ck.get("kd"):
                task.kd.load_state_dict(ck["kd"])
            optimizer.load_state_dict(upgrade_optimizer_state(ck["optimizer"], optimizer, task.parameters()))
            scheduler.load_state_dict(upgrade_scheduler_state(ck["scheduler"], optimizer))
            if ck.get("loss_scaler"):  # a 16-mixed run's loss scale goes on where it was, not from its initial value
                fabric.strategy.precision.load_state_dict(ck["loss_scaler"])
            position = ck.get("position")
            if position is None:  # an epoch's end: the next epoch starts from these states
                _restore_rng_states(*self._own(ck), fabric.device)
            start_epoch, step, best, bad, history = ck["epoch"] + 1, ck["step"], ck["best_metric"], ck["bad_epochs"], list(ck["history"])
            best_tie = float(ck.get("best_tiebreak", math.inf))  # checkpoints before the tie-break: none
            self._seconds_before = train_seconds_so_far(ck)
            self.batch_size = int(ck.get("batch_size", self.batch_size))
            resumed_at = start_epoch
            log.info("resumed from %s at epoch %d%s", resume, start_epoch,
                     f", batch {position['batches_done']}" if position else "")
            # The metrics history continues: the CSV is rewritten from the checkpoint's history (the
            # epochs that the resumed weights went through, each once), then the new epochs follow.
            with warnings.catch_warnings():  # "previous log files ... will be deleted": they are rewritten here
                warnings.filterwarnings("ignore", message="Experiment logs directory")
                for record in history:
                    for logger in self._csv_loggers():
                        logger.log_metrics({k: v for k, v in record.items() if k != "epoch"}, step=record["epoch"])
                self._flush_csv()
        extra = checkpoint_extra or {}
        t0 = self._t0 = time.perf_counter()
        log.info("fit: %s %s, precision %s, device %s, world size %d, %d train / %d val graphs",
                 task.kind, cfg.type, self.precision, fabric.device, fabric.world_size, len(train_set), len(val_set))
        epoch = start_epoch - 1
        resumed_batch = position["batches_done"] if position else 0
        status = "failed"
        self.stop.__enter__()  # USR1/TERM handlers under the requeue wrapper; restored in the finally below
        try:
            for epoch in range(start_epoch, cfg.epochs):
                if bad >= cfg.patience:
                    break
                self._epoch = epoch
                sampler = self._train_sampler
                sampler.batch_size = self.batch_size
                sampler.set_epoch(epoch)
                task_m.train()
                losses = _StepLosses()  # on the device; read every LOSS_READ_EVERY steps and at the end
                done = 0  # loader batches of this epoch trained
                if position is not None:  # a mid-epoch checkpoint: the same batches, minus those trained
                    sampler.batch_size, done = position["sampler_batch_size"], position["batches_done"]
                    mine = position["losses"]
                    if len(position.get("losses_ranks") or []) == fabric.world_size:
                        mine = position["losses_ranks"][fabric.global_rank]
                    losses.values = [v.to(fabric.device) for v in mine.unbind()]
                sampler.skip_batches = done  # read when the first batch is drawn: keep it until the next epoch
                te = time.perf_counter()
                bar = None
                if self.progress and fabric.global_rank == 0:

                    bar = progress_bar(total=len(train_loader) + done, initial=done, desc=f"epoch {epoch + 1}/{cfg.epochs}",
                               leave=False)
                # The loader draws a seed from the torch generator when its first batch is fetched, so
                # a mid-epoch checkpoint's generator states are restored after that (or after the loop).
                with phase_peak("train", device=fabric.device, release=False) as train_mem:
                    for batch in train_loader:
                        if position is not None:
                            _restore_rng_states(*self._own(ck), fabric.device)
                            position = ck = None
                        if self._stop_now(done):
                            self._stop(task, optimizer, scheduler, epoch, done, step, best, bad, history, extra,
                                       best_tie, losses, last_path)
                        done += 1
                        fresh = False
                        for loss, parts in self._run_batch(task, task_m, optimizer, scheduler, train_set,
                                                           self._to_device(batch)):
                            step += 1
                            fresh = losses.add(loss, parts, step) or fresh
                        if bar:
                            bar.update(1)
                            if fresh:
                                bar.set_postfix(loss=f"{losses.latest:.4f}")
                if bar:
                    bar.close()
                if position is not None:  # resumed after the epoch's last batch: no batch was fetched
                    _restore_rng_states(*self._own(ck), fabric.device)
                    position = ck = None
                if self._stop_now(0):  # after the epoch's last batch: validation runs after the resume
                    self._stop(task, optimizer, scheduler, epoch, done, step, best, bad, history, extra, best_tie,
                               losses, last_path)
                with phase_peak("validate", device=fabric.device, release=False) as val_mem:
                    val = task.validate(val_loader)
                # val: already global (Task.validate sums its counts over the ranks); never average it
                train_loss = float(fabric.all_reduce(torch.tensor(losses.mean(), device=fabric.device),
                                                     reduce_op="mean"))
                record = {"epoch": epoch, "step": step, "train_loss": train_loss, **val, "lr": scheduler.get_last_lr()[0],
                          "epoch_seconds": time.perf_counter() - te, "batch_size": self.batch_size,
                          "train_peak_mib": train_mem["peak_mib"], "val_peak_mib": val_mem["peak_mib"]}
                history.append(record)
                fabric.log_dict({k: v for k, v in record.items() if k != "epoch"}, step=epoch)
                score = sign * val[metric]
                tie_value = float(val[tiebreak]) if tiebreak else math.inf
                improved = score > best or (tiebreak is not None and score == best and tie_value < best_tie)
                if improved:
                    best, best_tie, bad = score, tie_value, 0
                else:
                    bad += 1
                state = self._checkpoint_state(task, optimizer, scheduler, epoch, step, best, bad, history, extra,
                                               best_tie)
                if improved:
                    self._save(state, best_path)
                self._save(state, last_path)
                self._flush_csv()  # metrics.csv on disk matches last.pt after every epoch, even if killed later
                log.info("epoch %d memory: train peak %.0f MiB, validation peak %.0f MiB (%s)", epoch,
                         train_mem["peak_mib"], val_mem["peak_mib"], "CUDA allocated" if fabric.device.type == "cuda" else "RSS")
                log.info("epoch %d: train_loss %.5f %s%s", epoch, train_loss,
                         " ".join(f"{k} {v:.5f}" for k, v in val.items()), " (best)" if improved else "")
                if self.on_epoch_end:
                    self.on_epoch_end(record)
                if self._stop_requested():
                    log.info("stopped on request after epoch %d", epoch)
                    break
                if epoch + 1 < cfg.epochs and bad < cfg.patience and self._stop_now(0):
                    raise self._preempted(last_path, epoch + 1, 0)  # last.pt: this epoch's end
            status = "success"
            if not keep_group:
                self.close()
        except Preempted as stopped:
            status = "preempted"
            log.info("%s", stopped)
            raise
        finally:
            self.stop.__exit__(None, None, None)
            for logger in fabric.loggers:
                logger.finalize(status)
            if getattr(self, "_handler", None) is not None:
                log.removeHandler(self._handler)
                self._handler.close()
                self._handler = None
        # the epochs trained (resumed ones included): an early stop leaves the loop at the top of an
        # epoch it does not train, so the loop variable counted one too many
        epochs_run = history[-1]["epoch"] + 1 if history else 0
        return FitResult(best_path, last_path, sign * best if math.isfinite(best) else float("nan"), epochs_run, history,
                         time.perf_counter() - t0, self.oom_events, self.batch_size,
                         str(resume) if resume else None, resumed_at, resumed_batch, self._seconds_before)

    def close(self) -> None:
        """Under DDP, leave the process group together (a barrier, then destroy it): a rank exiting
        while another is still inside gloo aborts the job. Nothing to do in one process."""
        if self.fabric.world_size > 1 and torch.distributed.is_initialized():
            self.fabric.barrier()
            torch.distributed.destroy_process_group()

    def _stop_requested(self) -> bool:
        """``should_stop`` (the panel's Stop button), asked after every epoch. Only rank zero has it: under
        DDP the ranks agree (an all-reduce every rank makes), or rank zero alone left the loop and the
        others' next collective failed ("connection reset": no summary, no test results)."""
        return self._any_rank(self.should_stop is not None and bool(self.should_stop()))

    def _any_rank(self, flag: bool) -> bool:
        """Whether any rank says ``flag`` (an all-reduce every rank makes; one process: its own)."""
        if self.fabric.world_size == 1:
            return flag
        total = self.fabric.all_reduce(torch.tensor(float(flag), device=self.fabric.device), reduce_op="sum")
        return bool(total > 0)

    def _stop_now(self, done: int) -> bool:
        """Whether to stop before loader batch ``done`` (or at a check outside the batches).

        One ``stat`` per batch in a single process. Under DDP every rank must stop at the same
        step, so the ranks agree (an all-reduce) every ``LOSS_READ_EVERY`` batches and at the
        checks outside the batches (``done == 0``): one rank that sees the stop file stops all.
        """
        fabric = self.fabric
        if fabric.world_size == 1:
            return self.stop.requested()
        if done % LOSS_READ_EVERY:
            return False
        return self._any_rank(self.stop.requested())

    def _stop(self, task, optimizer, scheduler, epoch, done, step, best, bad, history, extra, best_tie,
              losses: _StepLosses, last_path: Path) -> None:
        """Write ``last.pt`` at this step (the exact place in the epoch) and raise :class:`Preempted`."""
        state = self._checkpoint_state(task, optimizer, scheduler, epoch - 1, step, best, bad, history, extra,
                                       best_tie)
        state["position"] = {
            "epoch": epoch, "batches_done": done, "sampler_batch_size": self._train_sampler.batch_size,
            "losses": torch.stack(losses.values).detach().cpu() if losses.values else torch.zeros(0)}
        if self.fabric.world_size > 1:  # each rank's losses of the epoch so far (its mean goes into train_loss)
            state["position"]["losses_ranks"] = self._gather(state["position"]["losses"])
        self._save(state, last_path)
        raise self._preempted(last_path, epoch, done)

    def _gather(self, obj) -> list:
        """``obj`` of every rank, in rank order (every rank calls it)."""
        every = [None] * self.fabric.world_size
        torch.distributed.all_gather_object(every, obj)
        return every

    def _own(self, ck: dict) -> tuple[torch.Tensor, dict | None]:
        """This rank's generator states in a checkpoint: its own when the checkpoint holds every rank's
        of a run of this size, else the one set there (rank zero's; one process)."""
        ranks = ck.get("rng_ranks")
        if ranks and len(ranks) == self.fabric.world_size:
            mine = ranks[self.fabric.global_rank]
            return mine["rng"], mine.get("rng_other")
        return ck["rng"], ck.get("rng_other")

    def _preempted(self, last_path: Path, epoch: int, done: int) -> Preempted:
        if self.fabric.global_rank == 0:
            self.stop.acknowledge(last_path)
        return Preempted(last_path, epoch, done, self.stop.reason())

    def _csv_loggers(self) -> list[CSVLogger]:
        return [lg for lg in self.fabric.loggers if isinstance(lg, CSVLogger)]

    def _flush_csv(self) -> None:
        """Write the CSV logger's pending rows now (it would otherwise hold them until the end)."""
        for logger in self._csv_loggers():
            logger.save()


RESUME_KEYS = ("model", "optimizer", "scheduler", "rng", "epoch", "step", "best_metric", "bad_epochs", "history")
TRAIN_SECONDS = "train_seconds"
"""Key of a checkpoint's ``provenance`` (the checkpoint's own keys are a closed set,
:data:`~kdkit.training.checkpoint.CHECKPOINT_KEYS`): the training seconds of every attempt up to
that checkpoint; a fit resumed from it adds its own. Checkpoints written before it lack it."""


def train_seconds_so_far(ck: dict) -> float:
    """The training seconds a checkpoint's run had spent when it was written (every attempt); 0 for a
    checkpoint written before kdkit recorded them."""
    return float((ck.get("provenance") or {}).get(TRAIN_SECONDS, 0.0))


def check_resumable(ck: dict, task: Task, path: str | Path) -> None:
    """A checkpoint can continue this fit: it holds the training state and the same architecture.

    Raises:
        ValueError: naming what is missing or what differs.
    """
    missing = [k for k in RESUME_KEYS if k not in ck]
    if missing:
        raise ValueError(f"--resume {path}: the checkpoint lacks the training state {missing} (written by the legacy "
                         "trainer or stripped); it can be evaluated or used as a teacher, not resumed")
    theirs, ours = ck.get("model_config") or {}, task.model.config
    if theirs != ours:
        diff = sorted(k for k in set(theirs) | set(ours) if theirs.get(k) != ours.get(k))
        shown = ", ".join(f"{k} {theirs.get(k)!r} vs {ours.get(k)!r}" for k in diff[:6])
        raise ValueError(f"--resume {path}: the checkpoint's model differs from this run's ({shown}; checkpoint vs "
                         "run); resume with the run's original settings (its config.json) or start a new run")


def _other_rng_states(device: torch.device) -> dict:
    """numpy's, Python's and (on a GPU) CUDA's generator states, as ``weights_only``-loadable values."""
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    states = {"numpy": [name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss)],
              "python": random.getstate()}
    if device.type == "cuda":
        states["cuda"] = torch.cuda.get_rng_state(device)
    return states


def _restore_rng_states(torch_state: torch.Tensor, other: dict | None, device: torch.device) -> None:
    """Set every generator as :meth:`FabricTrainer._checkpoint_state` found it (older checkpoints: torch's only)."""
    torch.set_rng_state(torch_state)
    if not other:
        return
    name, keys, pos, has_gauss, gauss = other["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    version, internal, gauss_next = other["python"]
    random.setstate((version, tuple(internal), gauss_next))
    if device.type == "cuda" and "cuda" in other:
        torch.cuda.set_rng_state(other["cuda"], device)


class _CollateWithIndex(_Collate):
    """Fast collate that also keeps the graph indices (the OOM back-off re-batches from them)."""

    def __call__(self, indices: list[int]):
        batch = super().__call__(indices)
        batch.graph_idx = torch.as_tensor(indices, dtype=torch.long)
        return batch
