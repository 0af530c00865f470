#!/usr/bin/env bash
# The rollout the rollout workflow runs (and a person can run by hand):
#   scripts/rollout.sh MODEL VERSION [TIMEOUT_S]
# 1. VERSION becomes the canary, through the gate (servers with DIGITSERVE_CANARY_ALIAS=canary
#    send it their DIGITSERVE_CANARY_PERCENT of the traffic and watch it against production);
# 2. wait for enough live evidence (compared answers, agreement, no errors) -- a server retires
#    the canary by itself if it does worse than production;
# 3. promote production to it from that evidence, through the gate again; or, if the evidence
#    never came, retire the canary and fail.
# The registry comes from $DIGITSERVE_REGISTRY; credentials the usual boto3 way.
set -euo pipefail
model=${1:?model}
version=${2:?version}
timeout=${3:-1800}
digitserve=${DIGITSERVE_BIN:-"$(dirname "$0")/../.venv/bin/digitserve"}

"$digitserve" registry promote "$model" "$version" --alias canary
status=0
"$digitserve" registry watch "$model" --alias canary --timeout "$timeout" || status=$?
if [ "$status" -eq 0 ]; then
  exec "$digitserve" registry promote "$model" --from canary --reason "rollout of v$version"
fi
# (after a failed `if cmd; then`, $? is the if's own 0: the watch's status is kept above instead)
"$digitserve" registry retire "$model" --alias canary --reason "rollout of v$version: no promotion" || true
exit "$status"
