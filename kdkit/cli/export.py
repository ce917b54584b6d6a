"""``kdkit export --checkpoint best.pt [--out student.pt2]``."""
from __future__ import annotations

import json

from kdkit.data.datasets import REGISTRY
from kdkit.deploy.export import export_checkpoint


def cmd_export(args) -> int:
    result = export_checkpoint(args.checkpoint, args.out, args.dataset, args.data_root)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"exported {result['parameters']:,} parameters to {result['package']} ({result['bytes'] / 2**20:.1f} MiB, "
              f"{result['seconds']} s); graph-building metadata in {result['metadata']}")
    return 0


def register(sub) -> None:

    p = sub.add_parser("export", help="ahead-of-time compile a GAT checkpoint for deployment (.pt2)")
    p.add_argument("--checkpoint", required=True, help="a kdkit GAT checkpoint (best.pt)")
    p.add_argument("--out", default=None, help="package path (default: the checkpoint with .pt2)")
    p.add_argument("--dataset", choices=sorted(REGISTRY), default=None, help="example graphs (default: the checkpoint's dataset)")
    p.add_argument("--data-root", default=None)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_export)
