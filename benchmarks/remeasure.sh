#!/usr/bin/env bash
# Re-measures the README's headline speed figures on this machine (one core each) and writes
# one JSON record per benchmark into $OUT (default runs/remeasure/). Run on a quiet machine:
#   bash benchmarks/remeasure.sh            # ~15 min on the 2-core CI VM
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
KDKIT=${KDKIT:-.venv/bin/kdkit}
OUT=${OUT:-runs/remeasure}
DATA=${KDKIT_DATA_ROOT:-../shared/data/can-train-and-test}
export KDKIT_DATA_ROOT=$DATA
mkdir -p "$OUT"
FILE="$DATA/hcrl-sa/train_02_with_attacks/DoS-kia.csv.gz"

for i in 1 2 3; do  # preprocessing: 3 fresh processes, each a median of 5 after a burn-in
  $KDKIT bench preprocess --file "$FILE" --json > "$OUT/preprocess_$i.json"
done
# training step speed, Fabric vs the legacy loop; variants alternate, each in a fresh process
$KDKIT bench train --model gat --type student --dataset hcrl_sa --threads 1 --compile on --precision 32-true \
  --steps 40 --repeats 3 --json > "$OUT/train_student_fp32_compile.json"
$KDKIT bench train --model gat --type teacher --dataset hcrl_sa --threads 1 --compile on --precision bf16-mixed \
  --steps 20 --repeats 3 --json > "$OUT/train_teacher_bf16_compile.json"
# student inference: a student trained briefly (the weights do not change the speed)
CK="$OUT/student/hcrl_sa_gat_student/checkpoints/best.pt"
if [ ! -f "$CK" ]; then
  $KDKIT train --model gat --dataset hcrl_sa --type student --no-teacher --epochs 1 --runs-dir "$OUT/student" \
    --no-save-compat --compile false > "$OUT/student_train.log"
fi
for i in 1 2 3; do
  $KDKIT bench infer --checkpoint "$CK" --variants fp32-eager,fp32-aot --json > "$OUT/infer_$i.json"
done
$PY - "$OUT" <<'PY'
import json, pathlib, statistics, sys
out = pathlib.Path(sys.argv[1])
pre = [json.loads(p.read_text()) for p in sorted(out.glob("preprocess_*.json"))]
print("preprocess messages/s:", [round(p.get("messages_per_s", 0)) for p in pre])
for name in ("train_student_fp32_compile", "train_teacher_bf16_compile"):
    r = json.loads((out / f"{name}.json").read_text())
    print(name, {k: r[k] for k in ("speedup", "memory_ratio", "memory_ratio_rss") if k in r},
          {v: r[v]["graphs_per_s"] for v in ("legacy", "fabric")})
for p in sorted(out.glob("infer_*.json")):
    r = json.loads(p.read_text())
    print(p.name, {k: (v["messages_per_s"], v["latency_ms_p50"], v["latency_ms_p99"]) for k, v in r["variants"].items()})
PY
