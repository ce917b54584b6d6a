"""The run functions every front end calls: CLI, notebooks, widgets and SLURM jobs.

Owns one training run end to end and the evaluation of a checkpoint (:mod:`.run`), scoring any
recordings with a checkpoint alone (:mod:`.scoring`), re-setting a threshold for a new car
(:mod:`.calibrate`), run folders
and their locks (:mod:`.run_dir`), the ``saved_models/`` copies (:mod:`.saved_models`), the
batch sizer applied to a run config (:mod:`.batch_size`), notebook execution and
parameter checks (:mod:`.notebooks`) and the demo story (:mod:`.demo`).

Layer 5: may import every library layer below (data, models, config, training,
reporting); never a front end.
"""
from kdkit.workflows.run import evaluate_checkpoint, load_data, train

__all__ = ["train", "evaluate_checkpoint", "load_data"]
