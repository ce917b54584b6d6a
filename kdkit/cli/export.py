"""``kdkit export --checkpoint best.pt [--out student.pt2]``: needs only the checkpoint."""
from __future__ import annotations

import json
from pathlib import Path

from kdkit.cli.main import COMMANDS, check_writable, refuse_overwriting_inputs, whole
from kdkit.deploy.export import export_checkpoint


def cmd_export(args) -> int:
    if args.out:  # the package, and the .json and .npz beside it
        base = Path(args.out)
        refuse_overwriting_inputs({"--out": args.out, "--out's .json": str(base.with_suffix(".json")),
                                   "--out's .npz": str(base.with_suffix(".npz"))}, {"--checkpoint": args.checkpoint})
        check_writable("--out", args.out)  # before the minute of compiling
    result = export_checkpoint(args.checkpoint, args.out, threads=args.threads)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"exported {result['parameters']:,} parameters to {result['package']} ({result['bytes'] / 2**20:.1f} MiB, "
              f"{result['seconds']} s; output {result['output_kind']}, threshold {result['threshold']:.6g}); "
              f"graph-building metadata in {result['metadata']}"
              + (f"; the detector's native engine weights in {result['native_weights']}" if result["native_weights"]
                 else ""))
    return 0


def register(sub) -> None:

    p = sub.add_parser("export", help=COMMANDS["export"][1],
                       description="Ahead-of-time compile a GAT or fusion-student checkpoint for a gateway. Needs only "
                                   "the checkpoint: the graphs it is traced with are synthesized from its vocabulary "
                                   "and graph settings, so no training data is read. The GAT's package returns "
                                   "logits [graphs, 2] (attack when softmax(...)[:, 1] >= threshold), the fusion "
                                   "student's the fused score [graphs] (attack when score >= threshold); the "
                                   "metadata's output_kind says which.")
    p.add_argument("--checkpoint", required=True, help="a kdkit GAT or fusion-student checkpoint (best.pt)")
    p.add_argument("--out", default=None, help="package path (default: the checkpoint with .pt2)")
    p.add_argument("--threads", type=whole(1), default=1,
                   help="CPU threads the package is compiled for (default 1: one gateway core; a package compiled "
                        "for more threads is slower on one)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_export)
