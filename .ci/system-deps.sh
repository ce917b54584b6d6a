#!/usr/bin/env bash
# Debian packages the test suite needs (SLURM cluster, headless Chromium). Idempotent.
set -euo pipefail
need=()
for pkg in slurmctld slurmd slurm-client munge chromium; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
done
if [ ${#need[@]} -gt 0 ]; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
