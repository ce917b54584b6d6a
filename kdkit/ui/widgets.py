"""A JupyterLab panel over the same training functions as the CLI.

    from kdkit.ui.widgets import panel
    panel(dataset="synthetic", model="gat", type="teacher", epochs=5)

The panel builds a :class:`~kdkit.config.TrainConfig` with :func:`~kdkit.config.make_config`
from its controls (``p.config()``) and hands it to :func:`kdkit.workflows.train`, the function
``kdkit train`` runs, in a background thread: the kernel stays responsive while the
progress bar and the loss plot update after every epoch. "Submit to SLURM" calls the
orchestrator ``kdkit train --use-slurm`` calls. "Run sweep" runs a notebook over a grid (and
seeds) with the panel's settings as its fixed parameters, as ``kdkit sweep`` does: locally in a
pool, or as one SLURM job array. Nothing waits for a click: a notebook executed by papermill or
nbval shows the panel and runs on.

The controls come from the run schema: every :class:`~kdkit.config.TrainConfig` field
declared with ``panel=True`` gets one (its kind from the field's type, choices and range,
its tooltip from the field's help). Keys without a control (``hidden``,
``learning_rate``, ``runs_dir``, ...) go in the "Extra config" JSON box, the same JSON
``kdkit train --config`` takes.
"""
from __future__ import annotations

import html
import io
import json
import threading
import time
import traceback
from pathlib import Path
from typing import Any, Callable

import ipywidgets as w
from IPython.display import display
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from kdkit.cluster import sweep
from kdkit.cluster.orchestrator import FabricSlurmTrainingOrchestrator, load_presets
from kdkit.config import KD, FieldSpec, TrainConfig, format_value, make_config, parse_config_json, schema
from kdkit.data.datasets import dataset_name
from kdkit.reporting.records import stop_note
from kdkit.workflows.batch_size import optimize_config_batch_size
from kdkit.workflows.notebooks import NOTEBOOK_DIR, notebook_parameters
from kdkit.workflows.run import train
from kdkit.workflows.run_dir import RunDirError

PRECISION_ALIASES = {"32": "32-true", "16": "16-mixed", "bf16": "bf16-mixed"}  # what choose_precision normalises
STUDENT_ONLY_GROUPS = (KD,)       # settings that mean nothing to a teacher: disabled for one
STUDENT_ONLY_KEYS = ("teacher",)


def panel_fields(cls: type = TrainConfig) -> list[FieldSpec]:
    """The run-schema fields the panel shows a control for (``panel=True`` in :mod:`kdkit.config`)."""
    return [s for s in schema(cls) if s.panel]


def _label(name: str) -> str:
    words = name.split("_")
    return " ".join(w.upper() if w in ("kd", "id") else w for w in words).capitalize().replace("Kd ", "KD ")


def control_for(spec: FieldSpec, value: Any, style: dict) -> w.Widget:
    """An ipywidgets control for one schema field, from its type, choices and range."""
    common = dict(description=_label(spec.name), tooltip=spec.help, style=style)
    if spec.choices and spec.base is str:
        options = [c for c in spec.choices if c not in PRECISION_ALIASES] if spec.name == "precision" else list(spec.choices)
        value = PRECISION_ALIASES.get(value, value)
        if len(options) <= 3:
            return w.ToggleButtons(options=options, value=value, layout=w.Layout(display="flex", width="auto"),
                                   **{**common, "style": {**style, "button_width": "80px"}})
        return w.Dropdown(options=options, value=value, **common)
    if spec.suggestions and spec.base is str:  # an open set (datasets): pick a known one or type a folder/spec path
        return w.Combobox(options=list(spec.suggestions), value="" if value is None else str(value),
                          ensure_option=False, placeholder="key, folder or spec file", layout=w.Layout(width="420px"),
                          **common)
    if spec.base is bool and not spec.choices:
        return w.Checkbox(value=bool(value), indent=False, **common)
    if spec.base is int and not spec.optional:
        low = int(spec.low) if spec.low is not None else -(1 << 31)
        high = int(spec.high) if spec.high is not None else 1 << 20
        return w.BoundedIntText(value=value, min=low, max=high, **common)
    if spec.base is float and not spec.optional:
        low = spec.low if spec.low is not None else -1e12
        high = spec.high if spec.high is not None else 1e12
        if spec.low is not None and spec.high is not None and high - low <= 1:
            return w.FloatSlider(value=value, min=low, max=high, step=(high - low) / 20, **common)
        return w.BoundedFloatText(value=value, min=low, max=high, **common)
    return w.Text(value="" if value is None else str(value), placeholder="empty: " + format_value(spec.default),
                  layout=w.Layout(width="420px"), **common)


def control_value(spec: FieldSpec, control: w.Widget) -> Any:
    """The config value a control holds (text parsed by the field's type; empty text = None)."""
    value = control.value
    if not isinstance(control, w.Text):
        return value
    text = value.strip()
    if not text:
        return None if spec.optional else spec.default
    if spec.base in (int, float):
        try:
            return spec.base(text)
        except ValueError:
            raise ValueError(f"{_label(spec.name)}: {text!r} is not {'an int' if spec.base is int else 'a number'}") from None
    return text


LOG_LINES = 200  # the status area keeps the last lines only


class TrainPanel:
    """Controls for one training run, a live progress bar and loss plot, and the results.

    Args:
        slurm_preset: initial SLURM resource preset (``slurm_templates/presets.ini``).
            Default ``"cpu"``.
        schema: the run schema the controls come from. Default :class:`~kdkit.config.TrainConfig`.
        **defaults: initial TrainConfig keys; keys with a control set it, the others
            fill the "Extra config" JSON box. Checked with ``make_config`` at once.

    Attributes:
        summary: the dict :func:`kdkit.workflows.train` returned for the last run (None before).
        history: the epoch records of the running or last run (train_loss, val_loss, ...).
        error: the exception of the last background job, None when it succeeded.
        job_id: the last SLURM job submitted from the panel.
        sweep_dir: the folder of the last sweep started from the panel.
        sweep_results: the collected results of the last local sweep (``kdkit.cluster.sweep.collect``).
    """

    def __init__(self, slurm_preset: str = "cpu", schema: type = TrainConfig, **defaults: Any):
        self.schema = schema
        base = make_config(schema, **defaults)  # fails here, with the key's name, on a bad default
        extra = _extra_keys(defaults, base, schema)
        style = {"description_width": "110px"}

        self.controls: dict[str, w.Widget] = {}
        for spec in panel_fields(self.schema):  # one control per panel field of the run schema, as attributes too
            self.controls[spec.name] = control_for(spec, getattr(base, spec.name), style)
            setattr(self, spec.name, self.controls[spec.name])
        self.optimize_button = w.Button(description="Optimize", icon="tachometer",
                                        tooltip="find the largest batch that fits (DynamicBatchSizer)")
        self.extra = w.Textarea(value=json.dumps(extra) if extra else "", description="Extra config",
                                placeholder='{"learning_rate": 0.001, "hidden": 32}  (kdkit train --list-configs)',
                                style=style, layout=w.Layout(width="560px", height="60px"))
        presets = list(load_presets())
        self.slurm_preset = w.Dropdown(options=presets, value=slurm_preset if slurm_preset in presets else presets[0],
                                       description="SLURM preset", style=style)
        self.slurm_partition = w.Text(description="Partition", placeholder="preset's", style=style)
        self.slurm_account = w.Text(description="Account", placeholder="cluster default", style=style)
        self.slurm_time = w.Text(description="Time limit", placeholder="preset's (HH:MM:SS)", style=style)

        self.sweep_notebook = w.Text(value=str(NOTEBOOK_DIR / "student.ipynb"), description="Notebook",
                                     style=style, layout=w.Layout(width="560px"))
        self.sweep_grid = w.Textarea(description="Grid (JSON)", placeholder='{"kd_temperature": [2, 4], "kd_alpha": [0.5, 0.9]}',
                                     style=style, layout=w.Layout(width="560px", height="60px"))
        self.sweep_seeds = w.Text(description="Seeds", placeholder="e.g. 0,1,2 (empty: the notebook's seed)", style=style)
        self.sweep_parallel = w.BoundedIntText(value=min(2, sweep.local_cores()), min=1, max=10_000,
                                               description="At once", style=style,
                                               tooltip="tasks running at once (here: at most the cores; SLURM: %K)")
        self.sweep_slurm = w.Checkbox(value=False, indent=False, description="as a SLURM job array (SLURM resources)")
        self.sweep_button = w.Button(description="Run sweep", icon="th",
                                     tooltip="one notebook run per grid point x seed, with the panel's settings")

        self.train_button = w.Button(description="Train", button_style="primary", icon="play")
        self.slurm_button = w.Button(description="Submit to SLURM", icon="server", layout=w.Layout(width="170px"))
        self.stop_button = w.Button(description="Stop", icon="stop", disabled=True,
                                    tooltip="finish the current epoch, keep its checkpoints, then stop")
        self._stop = threading.Event()
        self.progress = w.IntProgress(value=0, min=0, max=base.epochs, description="Epoch 0/" + str(base.epochs),
                                      style=style, layout=w.Layout(width="420px"))
        self.plot = w.Image(format="png", layout=w.Layout(width="480px"))
        self.status = w.HTML(layout=w.Layout(width="900px", max_height="160px", overflow="auto"))
        self.results = w.HTML()

        self.figure = Figure(figsize=(5, 3), dpi=96)
        FigureCanvasAgg(self.figure)
        self.summary: dict | None = None
        self.history: list[dict] = []
        self.error: BaseException | None = None
        self.job_id: str | None = None
        self.sweep_dir: Path | None = None
        self.sweep_results: dict | None = None
        self._log: list[str] = []
        self._thread: threading.Thread | None = None

        self.type.observe(self._on_type, names="value")
        self.epochs.observe(self._on_epochs, names="value")
        self.train_button.on_click(lambda _b: self._clicked(self.train))
        self.optimize_button.on_click(lambda _b: self._clicked(self.optimize_batch_size))
        self.slurm_button.on_click(lambda _b: self._clicked(self.submit_slurm))
        self.sweep_button.on_click(lambda _b: self._clicked(self.run_sweep))
        self.stop_button.on_click(lambda _b: self.stop())
        self._on_type({"new": self.type.value})
        self._draw()

        groups: dict[str, list] = {}
        for spec in panel_fields(self.schema):
            control = self.controls[spec.name]
            if spec.name == "batch_size":
                control = w.HBox([control, self.optimize_button])
            column = "student" if spec.group in STUDENT_ONLY_GROUPS or spec.name in STUDENT_ONLY_KEYS else "run"
            groups.setdefault(column, []).append(control)
        slurm = w.VBox([self.slurm_preset, self.slurm_partition, self.slurm_account, self.slurm_time])
        sweep_box = w.VBox([self.sweep_notebook, self.sweep_grid, w.HBox([self.sweep_seeds, self.sweep_parallel]),
                            self.sweep_slurm, self.sweep_button])
        options = w.Accordion(children=[self.extra, slurm, sweep_box],
                              titles=("Extra config (JSON)", "SLURM resources", "Sweep (a grid of notebook runs)"))
        self.root = w.VBox([
            w.HTML("<b>kdkit: train a CAN intrusion detector</b>"),
            w.HBox([w.VBox(groups.get("run", [])), w.VBox(groups.get("student", []))]),
            options,
            w.HBox([self.train_button, self.stop_button, self.slurm_button]),
            self.progress,
            w.HBox([self.plot, self.results]),
            self.status,
        ])

    # ----------------------------------------------------------------- config
    def overrides(self) -> dict[str, Any]:
        """The config keys the controls set (the ``make_config`` keywords), extra JSON included.

        Raises:
            ValueError: the extra JSON is invalid, or sets a key that has a control.
        """
        extra = parse_config_json(self.extra.value.strip(), self.schema, source="Extra config")
        clash = sorted(set(extra) & {s.name for s in panel_fields(self.schema)})
        if clash:
            raise ValueError(f"Extra config sets {', '.join(clash)}: use the panel's control for "
                             f"{'it' if len(clash) == 1 else 'them'} instead")
        student = self.controls["type"].value == "student"
        out = {}
        for spec in panel_fields(self.schema):
            if not student and (spec.group in STUDENT_ONLY_GROUPS or spec.name in STUDENT_ONLY_KEYS):
                continue  # KD settings mean nothing to a teacher
            value = control_value(spec, self.controls[spec.name])
            if value is not None or spec.default is not None:
                out[spec.name] = value
        return {**out, **extra}

    def config(self):
        """The TrainConfig the controls describe (what Train runs)."""
        return make_config(self.schema, **self.overrides())

    # ----------------------------------------------------------------- actions
    def train(self, blocking: bool = False) -> threading.Thread | dict:
        """Runs ``kdkit.workflows.train(self.config())``, as ``kdkit train`` does.

        Args:
            blocking: wait for the end and return the summary (re-raising a training
                error). Default False: return the running background thread at once.
        """
        cfg = self.config()
        self.history, self.summary = [], None
        self.results.value = ""
        self.progress.max, self.progress.value, self.progress.bar_style = cfg.epochs, 0, ""
        self.progress.description = f"Epoch 0/{cfg.epochs}"
        self._draw()

        def job():

            alone = " alone (no Teacher checkpoint: no distillation)" if cfg.type == "student" and not cfg.teacher else ""
            self._say(f"training {cfg.model} {cfg.type}{alone} on {cfg.dataset} (run {cfg.resolved_run_name}); "
                      "preparing data ...")
            t0 = time.perf_counter()
            self._stop.clear()
            self.stop_button.disabled = False
            try:
                summary = train(cfg, progress=False, on_epoch_end=self._on_epoch_end, should_stop=self._stop.is_set)
            except RunDirError as err:
                if not getattr(err, "held", None):
                    raise
                raise RunDirError(f"run folder {err.run_dir} already holds a run ({', '.join(err.held)}): put "
                                  '{"overwrite": true} in Extra config to replace it, or {"run_name": "another name"} '
                                  "to train into a new folder") from err
            finally:
                self.stop_button.disabled = True
            self.summary = summary
            self.progress.bar_style = "success"
            self.progress.description = "done"
            self.results.value = results_table(summary)
            early = stop_note(summary, cfg.epochs, cfg.patience, requested=self._stop.is_set())
            early = f" ({early})" if early else ""
            self._say(f"done in {time.perf_counter() - t0:.1f} s{early}; best checkpoint {summary['best_checkpoint']}")
            return summary

        return self._run(job, blocking, self.train_button)

    def stop(self) -> None:
        """Ask a running Train to stop after its current epoch (checkpoints stay valid)."""
        if self._thread is None or not self._thread.is_alive():
            self._say("nothing to stop: no training is running")
            return
        self._stop.set()
        self._say("stop requested: finishing the current epoch")

    def optimize_batch_size(self, blocking: bool = False) -> threading.Thread | int:
        """Sets the batch size control from ``kdkit.workflows.batch_size.optimize_config_batch_size``.

        Args:
            blocking: wait and return the new batch size. Default False (background thread).
        """
        cfg = self.config()

        def job():

            self._say(f"searching the largest batch for {cfg.model} {cfg.type} on {cfg.dataset} ...")
            best = optimize_config_batch_size(cfg, echo=self._say).batch_size  # its report goes to the log
            self.batch_size.value = best
            self._say(f"batch size set to {best}")
            return best

        return self._run(job, blocking, self.optimize_button)

    def submit_slurm(self) -> str:
        """Submits the panel's config as a SLURM job, like ``kdkit train ... --use-slurm``.

        Returns:
            The job ID (also shown in the status area and kept in ``self.job_id``).
        """

        overrides = self.overrides()
        cfg = make_config(self.schema, **overrides)  # validate here, not in the job
        resources = {k: getattr(self, f"slurm_{k}").value.strip() for k in ("partition", "account", "time")}
        resources = {k: v for k, v in resources.items() if v}
        orch = FabricSlurmTrainingOrchestrator(runs_dir=cfg.runs_dir, preset=self.slurm_preset.value, schema=self.schema)
        self.job_id = orch.submit_run(overrides, **resources)
        run_dir = orch.registry.load().get(self.job_id, {}).get("run_dir", "")
        self._say(f"submitted SLURM job {self.job_id}; run dir {run_dir}; follow it: kdkit slurm wait {self.job_id}")
        return self.job_id

    def sweep_parameters(self, notebook: str | Path, grid: dict, seeds: list[int] | None = None) -> dict[str, Any]:
        """The panel's settings the notebook declares as parameters (``teacher`` as ``teacher_checkpoint``),
        without the grid's keys: every sweep task's fixed parameters. A panel set to train a teacher
        describes the teacher: a setting the notebook has a ``teacher_`` parameter for (the student
        notebook's quick teacher: sizes, epochs) goes there, not to the student."""
        declared = notebook_parameters(notebook)
        teacher_panel = self.type.value == "teacher"
        out = {}
        for key, value in self.overrides().items():
            name = "teacher_checkpoint" if key == "teacher" else key
            if teacher_panel and f"teacher_{key}" in declared:
                name = f"teacher_{key}"
            if name in declared and name not in grid and name != "run_dir" \
                    and not (name == "seed" and seeds):
                out[name] = value
        return out

    def run_sweep(self, blocking: bool = False) -> threading.Thread | dict | str:
        """Runs the notebook over the sweep grid with the panel's settings, like ``kdkit sweep``.

        Locally the pool runs in the background (the progress bar counts tasks); with "as a
        SLURM job array" the sweep is submitted with the panel's SLURM resources.

        Args:
            blocking: wait for a local sweep and return its results. Default False.

        Returns:
            The background thread (or the results when blocking); the array's job ID on SLURM.
        """
        text = self.sweep_grid.value.strip()
        try:
            grid = json.loads(text) if text else None
        except json.JSONDecodeError as err:
            raise ValueError(f"Sweep grid is not valid JSON ({err}); e.g. {{\"kd_alpha\": [0.5, 0.9]}}") from None
        if grid is None:
            raise ValueError('Sweep grid is empty: give notebook parameters and their values, e.g. {"kd_alpha": [0.5, 0.9]}')
        seeds = sweep.parse_seeds(self.sweep_seeds.value) if self.sweep_seeds.value.strip() else None
        notebook = Path(self.sweep_notebook.value.strip())
        spec = sweep.plan(notebook, grid, seeds, parameters=self.sweep_parameters(notebook, grid, seeds),
                          sweeps_dir=Path(self.config().runs_dir) / "sweeps")
        k = self.sweep_parallel.value
        if self.sweep_slurm.value:
            resources = {k_: getattr(self, f"slurm_{k_}").value.strip() for k_ in ("partition", "account", "time")}
            resources = {k_: v for k_, v in resources.items() if v}
            orch = FabricSlurmTrainingOrchestrator(runs_dir=Path(spec["sweeps_dir"]) / spec["name"],
                                                   preset=self.slurm_preset.value, schema=self.schema)
            orch.resources(resources)                  # a bad resource is refused before anything is written
            self.sweep_dir = sweep.create(spec)
            self.job_id = sweep.submit(self.sweep_dir, orch, max_parallel=k, **resources)
            self._say(f"submitted sweep {spec['name']} ({len(spec['tasks'])} tasks) as job array {self.job_id}; "
                      f"follow it: kdkit sweep status {self.sweep_dir}")
            return self.job_id
        if self._thread is not None and self._thread.is_alive():     # before the sweep's folder is written
            raise RuntimeError("the panel is still busy with the previous job; wait for it to finish")
        self.sweep_dir = sweep.create(spec)
        total = len(spec["tasks"])
        self.progress.max, self.progress.value, self.progress.bar_style = total, 0, ""
        self.progress.description = f"Tasks 0/{total}"

        def task_ended(index: int, state: str) -> None:
            self.progress.value += 1
            self.progress.description = f"Tasks {self.progress.value}/{total}"
            self._say(f"sweep task {index}: {state}")

        def job():
            self._say(f"sweep {spec['name']}: {total} run(s) of {notebook.name}, {k} at a time, in {self.sweep_dir}")
            self.sweep_results = sweep.run_local(self.sweep_dir, max_parallel=k, on_task_end=task_ended)
            failed = [r["task"] for r in self.sweep_results["rows"] if r["state"] != "COMPLETED"]
            self.progress.bar_style = "warning" if failed else "success"
            self._say(f"sweep done: {total - len(failed)}/{total} completed; table {self.sweep_dir / 'results.csv'}"
                      + (f"; not completed: tasks {failed} (kdkit sweep retry-failed {self.sweep_dir})" if failed else ""))
            return self.sweep_results

        return self._run(job, blocking, self.sweep_button)

    def wait(self, timeout: float | None = None) -> None:
        """Waits for the running background job (training, batch search or a local sweep)."""
        if self._thread is not None:
            self._thread.join(timeout)

    # ----------------------------------------------------------------- display
    def show(self) -> None:

        display(self.root)

    def _ipython_display_(self) -> None:
        self.show()

    # ----------------------------------------------------------------- internals
    def _run(self, job: Callable[[], Any], blocking: bool, button: w.Button):
        if self._thread is not None and self._thread.is_alive():
            raise RuntimeError("the panel is still busy with the previous job; wait for it to finish")
        self.error = None
        box: dict[str, Any] = {}

        def target():
            button.disabled = True
            try:
                box["result"] = job()
            # A background thread's exception would only reach the kernel's stderr: show it
            # in the panel (and re-raise it to a blocking caller) instead.
            except Exception as err:  # noqa: BLE001
                self.error = err
                self.progress.bar_style = "danger"
                self._say(f"error: {err}", "".join(traceback.format_exception(err)))
            finally:
                button.disabled = False

        self._thread = threading.Thread(target=target, name="kdkit-panel", daemon=True)
        self._thread.start()
        if not blocking:
            return self._thread
        self._thread.join()
        if self.error is not None:
            raise self.error
        return box["result"]

    def _clicked(self, action: Callable[[], Any]) -> None:
        try:
            action()
        except (ValueError, RuntimeError, FileNotFoundError, FileExistsError) as err:
            self._say(f"error: {err}")

    def _on_epoch_end(self, record: dict) -> None:
        self.history.append(record)
        n = int(record["epoch"]) + 1
        self.progress.value = min(n, self.progress.max)
        self.progress.description = f"Epoch {n}/{self.progress.max}"
        self._draw()
        self._say(f"epoch {n}: " + "  ".join(f"{k} {record[k]:.4f}" for k in ("train_loss", "val_loss", "val_f1")
                                               if k in record))

    def _draw(self) -> None:
        self.figure.clear()
        ax = self.figure.add_subplot()
        epochs = [int(h["epoch"]) + 1 for h in self.history]
        for key, style in (("train_loss", "o-"), ("val_loss", "s--")):
            if any(key in h for h in self.history):
                ax.plot(epochs, [h.get(key, float("nan")) for h in self.history], style, label=key.replace("_", " "))
        if self.history:
            ax.legend()
        ax.set(xlabel="epoch", ylabel="loss", title="loss per epoch", xlim=(0.5, max(len(epochs), 1) + 0.5))
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
        ax.grid(alpha=0.3)
        self.figure.tight_layout()
        buf = io.BytesIO()
        self.figure.canvas.print_png(buf)
        self.plot.value = buf.getvalue()

    def _say(self, line: str, detail: str = "") -> None:
        self._log.append(time.strftime("%H:%M:%S ") + line + (("\n" + detail) if detail else ""))
        del self._log[:-LOG_LINES]
        self.status.value = "<pre style='margin:0;white-space:pre-wrap'>" + html.escape("\n".join(self._log)) + "</pre>"

    def _on_epochs(self, change: dict) -> None:
        if self._thread is None or not self._thread.is_alive():  # a running job keeps its own count
            self.progress.max, self.progress.value, self.progress.bar_style = change["new"], 0, ""
            self.progress.description = f"Epoch 0/{change['new']}"

    def _on_type(self, change: dict) -> None:
        student = change["new"] == "student"
        for spec in panel_fields(self.schema):
            if spec.group in STUDENT_ONLY_GROUPS or spec.name in STUDENT_ONLY_KEYS:
                self.controls[spec.name].disabled = not student
        if student and not self.teacher.value:  # offer the teacher the panel's defaults would have written
            guess = Path(TrainConfig.runs_dir) / f"{dataset_name(self.dataset.value)}_{self.model.value}_teacher/checkpoints/best.pt"
            if guess.is_file():
                self.teacher.value = str(guess)


def _extra_keys(defaults: dict[str, Any], cfg, schema: type = TrainConfig) -> dict[str, Any]:
    """The defaults without a control that ``make_config`` would not set to the same value anyway.

    ``panel(**cfg.to_dict())`` then shows only what differs (the "Extra config" box stays
    short) while ``config()`` still rebuilds exactly ``cfg``; if it would not, keep them all.
    """
    names = {s.name for s in panel_fields(schema)}
    extra = {k: v for k, v in defaults.items() if k not in names}
    controls = {k: v for k, v in defaults.items() if k in names}
    preset = {k: extra[k] for k in ("preset",) if extra.get(k, "auto") != "auto"}  # it fills other keys
    plain = make_config(schema, **controls, **preset).to_dict()
    kept = {**preset, **{k: v for k, v in extra.items() if plain[k] != v}}
    return kept if make_config(schema, **controls, **kept) == cfg else extra


def results_table(summary: dict) -> str:
    """HTML table of the test metrics per scenario (F1 first) from a train summary."""
    test = summary["test"]
    rows = list(test["scenarios"].items()) + [("overall", test["overall"])]
    cols = ("f1", "precision", "recall", "windows", "attack_windows")

    def cell(v):
        if v is None or (isinstance(v, float) and v != v):
            return "-"
        return f"{v:d}" if isinstance(v, int) else f"{v:.4f}"

    head = "".join(f"<th style='padding:2px 8px'>{c.replace('_', ' ')}</th>" for c in ("scenario", *cols))
    body = "".join(
        "<tr>" + f"<td style='padding:2px 8px'>{html.escape(name)}</td>"
        + "".join(f"<td style='padding:2px 8px;text-align:right'>{cell(m.get(c))}</td>" for c in cols) + "</tr>"
        for name, m in rows)
    return (f"<b>F1 per scenario</b> ({html.escape(summary['model'])} {html.escape(summary['type'])}, "
            f"{summary['parameters']:,} parameters)<table>" + f"<tr>{head}</tr>{body}</table>")


def panel(**defaults: Any) -> TrainPanel:
    """A :class:`TrainPanel`; the last expression of a cell shows it.

    Args:
        **defaults: TrainConfig keys to start from (and ``slurm_preset``), e.g.
            ``panel(dataset="hcrl_sa", model="vgae", epochs=5)``.
    """
    return TrainPanel(**defaults)
