"""Quality benchmark on the real hcrl_sa (issue: teachers, students and KD).

Trains a GAT teacher on hcrl_sa's train folders, a student distilled from it and the same
student without KD, evaluates all three on the four official test folders and prints JSON
(F1 per scenario, parameters, CPU training time).

    KDKIT_DATA_ROOT=../shared/data/can-train-and-test python benchmarks/quality_hcrl_sa.py --epochs 8 --model gat
"""
from __future__ import annotations

import argparse
import json
import time

import torch


def _round(value: float | None) -> float | None:
    """F1 is None (undefined) for a scenario without attack windows."""
    return None if value is None else round(value, 4)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="gat", choices=["gat", "vgae"])
    ap.add_argument("--dataset", default="hcrl_sa")
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--student-epochs", type=int, default=None)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    ap.add_argument("--runs-dir", default="runs/quality")
    ap.add_argument("--teacher", default=None, help="reuse a trained teacher checkpoint")
    ap.add_argument("--out", default=None, help="also write the JSON here")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from kdkit.config import make_config
    from kdkit.workflows.run import load_data, train

    common = dict(model=args.model, dataset=args.dataset, runs_dir=args.runs_dir, save_compat=False, precision="32-true")
    data = load_data(make_config(**common))
    out: dict = {"dataset": args.dataset, "model": args.model, "torch_threads": torch.get_num_threads()}
    t0 = time.perf_counter()
    if args.teacher:
        teacher_ckpt = args.teacher
    else:
        t = train(make_config(**common, type="teacher", epochs=args.epochs, run_name=f"{args.model}_teacher"), progress=False, data=data)
        out["teacher"] = _brief(t)
        teacher_ckpt = t["best_checkpoint"]
    se = args.student_epochs or args.epochs
    kd = train(make_config(**common, type="student", teacher=teacher_ckpt, epochs=se, run_name=f"{args.model}_student_kd"), progress=False, data=data)
    alone = train(make_config(**common, type="student", epochs=se, run_name=f"{args.model}_student_alone"), progress=False, data=data)
    out["student_kd"], out["student_alone"] = _brief(kd), _brief(alone)
    out["total_seconds"] = round(time.perf_counter() - t0, 1)
    text = json.dumps(out, indent=2)
    print(text)
    if args.out:
        with open(args.out, "w") as fh:
            fh.write(text)


def _brief(summary: dict) -> dict:
    return {"parameters": summary["parameters"], "size_bytes": summary["size_bytes"], "epochs_run": summary["epochs_run"],
            "train_seconds": summary["train_seconds"], "threshold": summary["threshold"],
            "f1": {k: _round(v["f1"]) for k, v in summary["test"]["scenarios"].items()},
            "roc_auc": {k: (round(v["roc_auc"], 4) if v["roc_auc"] is not None else None) for k, v in summary["test"]["scenarios"].items()},
            "overall_f1": _round(summary["test"]["overall"]["f1"])}


if __name__ == "__main__":
    main()
