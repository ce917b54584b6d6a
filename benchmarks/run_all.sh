#!/usr/bin/env bash
# Regenerates every speed figure of the README on this machine, one core each, and writes one
# JSON record (with the machine) to $OUT/all.json, plus one file per benchmark. Each figure is
# a min/median/max over >= 3 interleaved runs (fresh processes where the benchmark allows it).
# Run it on a quiet machine (other jobs distort wall time; CPU seconds are printed beside it):
#   bash benchmarks/run_all.sh            # ~70 min on the 2-core CI VM (SCALING=0: ~25 min)
#   STEPS=10 REPEATS=3 bash benchmarks/run_all.sh   # shorter training runs
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
KDKIT=${KDKIT:-.venv/bin/kdkit}
OUT=${OUT:-runs/bench}
STEPS=${STEPS:-30}
REPEATS=${REPEATS:-3}
DATA=${KDKIT_DATA_ROOT:-../shared/data/can-train-and-test}
export KDKIT_DATA_ROOT=$DATA
mkdir -p "$OUT"
CSV="$DATA/hcrl-sa/train_02_with_attacks/DoS-kia.csv.gz"
REPLAY="$DATA/hcrl-sa/test_01_known_vehicle_known_attack/DoS-sonata.csv.gz"
CANDUMP=$(ls "$DATA"/../candump/*.log* 2>/dev/null | head -1 || true)  # the RAV4 log beside can-train-and-test

echo "== preprocessing: file -> graphs ($CSV)"
$KDKIT bench preprocess --file "$CSV" --repeats "$REPEATS" --json > "$OUT/preprocess.json"

echo "== training step: the plain PyG loop vs the Fabric trainer (fresh processes, interleaved)"
# the README's rows: fused attention (the default) eager and compiled, and PyG's attention eager; fp32
for model_type in student teacher; do
  for variant in "off auto" "on auto" "off stock"; do
    set -- $variant
    $KDKIT bench train --model gat --type $model_type --dataset hcrl_sa --threads 1 --precision 32-true --compile "$1" \
      --attention "$2" --steps "$STEPS" --repeats "$REPEATS" --json > "$OUT/train_gat_${model_type}_compile_$1_attention_$2.json"
  done
done

echo "== student inference (interleaved variants) and end to end"
CK="$OUT/student/hcrl_sa_gat_student/checkpoints/best.pt"
if [ ! -f "$CK" ]; then  # a briefly trained student: the weights do not change the speed
  $KDKIT train --model gat --dataset hcrl_sa --type student --no-teacher --epochs 1 --runs-dir "$OUT/student" \
    --no-save-compat --compile false > "$OUT/student_train.log"
fi
$KDKIT bench infer --checkpoint "$CK" --variants all --rounds "$REPEATS" --end-to-end "$REPLAY" --json > "$OUT/infer.json"

echo "== detector: replay and live latency"
$KDKIT export --checkpoint "$CK" --out "$OUT/student.pt2" > "$OUT/export.log"
$KDKIT bench detect --model "$OUT/student.pt2" --input "$REPLAY" --repeats "$REPEATS" --json > "$OUT/detect_csv.json"
if [ -n "$CANDUMP" ]; then
  $KDKIT bench detect --model "$OUT/student.pt2" --input "$CANDUMP" --channel can0 --repeats "$REPEATS" --json \
    > "$OUT/detect_candump.json"
fi
# the same recording as a one-channel candump log (reader cost of that format, same graphs), and a
# recording with larger graphs (fuzzing's random IDs)
$PY - "$REPLAY" "$OUT/replay.candump.log.gz" <<'PY'
import gzip, sys
from kdkit.data.readers import read_messages
m = read_messages(sys.argv[1])
with gzip.open(sys.argv[2], "wt") as f:
    f.writelines(f"({t:.6f}) can0 {int(i):03X}#{bytes(p[:d]).hex().upper()}\n"
                 for t, i, d, p in zip(m.timestamp, m.can_id, m.dlc, m.payload))
PY
$KDKIT bench detect --model "$OUT/student.pt2" --input "$OUT/replay.candump.log.gz" --repeats "$REPEATS" --json \
  > "$OUT/detect_candump_1ch.json"
$KDKIT bench detect --model "$OUT/student.pt2" --input "$DATA/hcrl-sa/test_01_known_vehicle_known_attack/fuzzing-kia.csv.gz" \
  --repeats "$REPEATS" --json > "$OUT/detect_csv_fuzzing.json"
$KDKIT bench detect --model "$OUT/student.pt2" --input "$REPLAY" --live --seconds 10 --json > "$OUT/detect_live.json"

echo "== preparation at any size: generated CSVs and candump logs, both graph builders (fresh processes, interleaved)"
# PREP_SIZES=200000,2700000,30000000 adds the 30 M rows of the README (~6 min more per format)
PREP_SIZES=${PREP_SIZES:-200000,2700000}
for fmt in csv candump; do
  $PY benchmarks/prep_memory.py table --format $fmt --sizes "$PREP_SIZES" --repeats "$REPEATS" --builders numpy,auto \
    --work "$OUT/prep_work" --out "$OUT/prep_$fmt.json" > "$OUT/prep_$fmt.log"
done

echo "== multi-process training: 1 process vs 2 (whole kdkit train runs, interleaved; ~35 min)"
TK="$OUT/teacher/hcrl_sa_gat_teacher/checkpoints/best.pt"
if [ ! -f "$TK" ]; then  # a 1-epoch teacher to distil from: its speed is what matters here
  $KDKIT train --model gat --dataset hcrl_sa --type teacher --epochs 1 --runs-dir "$OUT/teacher" \
    --no-save-compat --compile false > "$OUT/teacher_train.log"
fi
if [ "${SCALING:-1}" = 1 ]; then
  $PY benchmarks/scaling.py --roles student,student_kd,teacher --teacher "$TK" --epochs 2 --repeats "$REPEATS" \
    --runs-dir "$OUT/scaling" --out "$OUT/scaling.json" --markdown > "$OUT/scaling.md"
  # the student over 6 epochs (the first epoch's warm-up weighs less), batch 64 and 128 per process, 3 seeds
  for seed in 0 1 2; do
    $PY benchmarks/scaling.py --roles student --variants p1t2,p2t1,p1t2b128,p2t1b128 --epochs 6 --repeats 1 \
      --seed $seed --runs-dir "$OUT/scaling" --out "$OUT/scaling_student_s$seed.json" --markdown > "$OUT/scaling_student_s$seed.md"
  done
  # where a synchronised step's time goes: alone, two apart, DDP, synchronised by hand
  for batch in 64 128; do
    $PY benchmarks/ddp_step.py --dataset hcrl_sa --batch-size $batch --rounds "$REPEATS" --out "$OUT/ddp_step_$batch.json" > /dev/null
  done
fi

$PY - "$OUT" <<'PY'
import json, pathlib, sys
from kdkit.training.hardware import machine_info
out = pathlib.Path(sys.argv[1])
record = {"machine": machine_info(), "results": {}}
for p in sorted(out.glob("*.json")):
    if p.name != "all.json":
        record["results"][p.stem] = json.loads(p.read_text())
(out / "all.json").write_text(json.dumps(record, indent=1))
r = record["results"]
for name, v in r.items():
    if name.startswith("train_"):
        print(f"{name} ({v['fabric']['attention']}): fabric/plain {v['speedup']}x wall, {v['speedup_cpu_time']}x CPU, memory {v['memory_ratio']}x; "
              f"plain {v['plain']['graphs_per_s']} fabric {v['fabric']['graphs_per_s']} graphs/s; {v['fabric']['precision_reason']}")
for k, v in r["infer"]["variants"].items():
    print(f"infer {k}: {v['messages_per_s_spread']} messages/s, p50 {v['latency_ms_p50']} p99 {v['latency_ms_p99']} ms")
print("infer effects:", r["infer"]["effects"])
for k in ("detect_csv", "detect_candump_1ch", "detect_csv_fuzzing", "detect_candump"):
    if k in r:
        print(k, r[k]["messages_per_s"])
print("detect_live p50/p99 ms:", r["detect_live"]["latency_ms_p50"], r["detect_live"]["latency_ms_p99"])
for fmt in ("csv", "candump"):
    for row in r.get(f"prep_{fmt}", {}).get("summary", []):
        print(f"prepare {fmt} {row['messages']:,} ({row['builder']}): {row['msg_per_cpu_s']} messages per CPU s, "
              f"peak above imports {row['peak_above_imports_mib']} MiB")
for role, variants in r.get("scaling", {}).get("table", {}).items():
    for name, v in variants.items():
        print(f"scaling {role} {name}: {v['epoch_s']['median']} s/epoch ({v['epoch_speedup_vs_p1t2']}x), "
              f"fixed {v['train_fixed_s']['median']} s, test pass {v['test_pass_s']['median']} s")
for batch in (64, 128):
    for mode, v in r.get(f"ddp_step_{batch}", {}).get("modes", {}).items():
        print(f"ddp_step batch {batch} {mode}: step {v['step_ms']['median']} ms, {v['graphs_per_s']['median']} graphs/s")
print(f"written: {out / 'all.json'}")
PY
