#!/usr/bin/env bash
# The command the promote workflow runs (and the test runs against moto):
#   scripts/promote.sh MODEL VERSION|best [ALIAS]
# The registry comes from $DIGITSERVE_REGISTRY; credentials the usual boto3 way.
set -euo pipefail
model=${1:?model}
version=${2:?version or best}
alias=${3:-production}
digitserve=${DIGITSERVE_BIN:-"$(dirname "$0")/../.venv/bin/digitserve"}
if [ "$version" = best ]; then
  exec "$digitserve" registry promote "$model" --best --alias "$alias"
fi
exec "$digitserve" registry promote "$model" "$version" --alias "$alias"
