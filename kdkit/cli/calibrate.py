"""``kdkit calibrate``: re-set a checkpoint's threshold for a new car from its attack-free recordings,
or (``--adapt``, fusion checkpoints) adapt it to that car: its IDs, their timing and the score scales.

    kdkit calibrate --checkpoint best.pt --clean rav4-clean.log.gz --channel can0 --fpr 0.01 --out best_rav4.pt
    kdkit calibrate --adapt --checkpoint fusion.pt --clean rav4-clean.log.gz --channel can0 --out fusion_rav4.pt
    kdkit calibrate --adapt --checkpoint fusion.pt --clean drive.log.gz --first-seconds 60 --out fusion_car.pt
"""
from __future__ import annotations

import argparse
import json

from kdkit.cli.main import COMMANDS, check_writable, refuse_overwriting_inputs
from kdkit.workflows.calibrate import adapt_checkpoint, calibrate_checkpoint


def _part(res: dict) -> str:
    return "" if res.get("first_seconds") is None else f" of each recording's first {res['first_seconds']:g} s"


def _print_adapted(res: dict) -> None:
    for f in res["files"]:
        note = f", {f['left_out_attack_windows']:,} attack windows left out" if f["left_out_attack_windows"] else ""
        print(f"{f['path']}: {f['windows']:,} clean windows{note}")

    def rate(r):
        return "-" if r is None else f"{r:.2%}"

    print(f"adapted on {res['windows']:,} clean windows{_part(res)} (fpr {res['fpr']:g}): the car sends {res['ids_of_the_car']:,} IDs, "
          f"{res['ids_shared_with_training']:,} known from training, {res['ids_added']:,} added to the vocabulary "
          f"(e.g. {', '.join(res['added_id_examples']) or '-'}); {res['ids_profiled']:,} IDs with a timing profile")
    print(f"on the clean windows: alarm rate {rate(res['alarm_rate_before'])} -> {rate(res['alarm_rate_after'])}, "
          f"judged as an unknown vehicle {rate(res['unknown_vehicle_share_before'])} -> "
          f"{rate(res['unknown_vehicle_share_after'])}")
    for w in res["warnings"]:
        print(f"note: {w}")
    print(f"written {res['out']} (the weights are the checkpoint's; vocabulary, ID profiles and combiner re-fitted)")


def cmd_calibrate(args: argparse.Namespace) -> int:
    refuse_overwriting_inputs({"--out": args.out}, {"--clean": args.clean})  # (--checkpoint: --force decides)
    check_writable("--out", args.out)  # before the scoring
    if args.adapt:
        res = adapt_checkpoint(args.checkpoint, args.clean, args.out, fpr=args.fpr, channel=args.channel,
                               on_bad_rows=args.on_bad_rows, allow_attacks=args.allow_attacks, force=args.force,
                               first_seconds=args.first_seconds)
        if args.json:
            print(json.dumps(res, indent=2))
        else:
            _print_adapted(res)
        return 0
    res = calibrate_checkpoint(args.checkpoint, args.clean, args.out, fpr=args.fpr, channel=args.channel,
                               on_bad_rows=args.on_bad_rows, allow_attacks=args.allow_attacks, force=args.force,
                               first_seconds=args.first_seconds)
    if args.json:
        print(json.dumps(res, indent=2))
        return 0
    for f in res["files"]:
        note = f", {f['left_out_attack_windows']:,} attack windows left out" if f["left_out_attack_windows"] else ""
        if f["skipped_rows"]:
            note += f", {f['skipped_rows']:,} malformed rows skipped ({f['skipped_attack_rows']:,} attack rows)"
        rate = "-" if f["alarm_rate_before"] is None else f"{f['alarm_rate_before']:.2%} -> {f['alarm_rate_after']:.2%}"
        print(f"{f['path']}: {f['windows']:,} windows{note}; alarm rate {rate}")
    print(f"calibrated on {res['windows']:,} clean windows{_part(res)} (fpr {res['fpr']:g}): threshold {res['old_threshold']:.6g} -> "
          f"{res['new_threshold']:.6g}; alarm rate on them {res['alarm_rate_before']:.2%} ({res['alarms_before']:,}) -> "
          f"{res['alarm_rate_after']:.2%} ({res['alarms_after']:,})")
    if res["new_threshold"] < res["old_threshold"] and res["alarms_after"] > res["alarms_before"]:
        print(f"note: the threshold went down: on this capture the model alarmed on fewer clean windows than the "
              f"--fpr budget of {res['fpr']:.2%}, and the calibrated threshold spends that budget, so it alarms more "
              "here (and catches more); give a smaller --fpr to keep fewer false alarms")
    for w in res["warnings"]:
        print(f"warning: {w}")
    print(f"written {res['out']} (the threshold and its provenance's calibration record changed, nothing else)")
    return 0


def register(sub) -> None:
    p = sub.add_parser("calibrate", help=COMMANDS["calibrate"][1],
                       description="Score every window of a new car's attack-free recordings with the checkpoint and "
                                   "write a copy whose threshold keeps their alarm rate <= --fpr. Only the threshold "
                                   "changes: the model still knows only the IDs of the car it was trained on, so a "
                                   "new car needs its own attack-free recording. With --adapt (fusion checkpoints) "
                                   "the model learns the new car's IDs, their timing and its score scales from "
                                   "those recordings, keeping its trained weights.")
    p.add_argument("--checkpoint", required=True, help="a kdkit GAT, VGAE or fusion checkpoint (best.pt)")
    p.add_argument("--clean", required=True, nargs="+", metavar="FILE_OR_FOLDER",
                   help="attack-free recordings of the new car (any format kdkit reads; a folder: every recording "
                        "in it, recursively)")
    p.add_argument("--fpr", type=float, default=0.01,
                   help="alarm rate to keep on the clean windows, in (0, 0.5); needs >= 1/fpr windows (default 0.01)")
    p.add_argument("--first-seconds", type=float, default=None, metavar="S",
                   help="use only the first S seconds of each recording (e.g. the clean start of a drive; replay "
                        "the rest with kdkit detect). Default: every message")
    p.add_argument("--out", required=True, help="the calibrated checkpoint to write")
    p.add_argument("--channel", default=None,
                   help="logger files (.log/.asc/.blf/.trc): keep only this bus channel. A file of several"
                        " buses needs one ('*' reads them all as one stream).")
    p.add_argument("--on-bad-rows", choices=["error", "skip"], default=None,
                   help="malformed rows: stop or skip and count (default: as the checkpoint was trained)")
    p.add_argument("--allow-attacks", action="store_true",
                   help="recordings with labelled attack rows: calibrate on their attack-free windows instead of "
                        "refusing them")
    p.add_argument("--adapt", action="store_true",
                   help="fusion checkpoints: adapt the model to the new car instead of moving the threshold: the "
                        "car's IDs join the vocabulary, their timing profiles and the combiner's scales and "
                        "thresholds are re-fitted on the clean recordings (the trained weights stay)")
    p.add_argument("--force", action="store_true", help="allow --out to be the checkpoint itself (replaced)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=cmd_calibrate)
