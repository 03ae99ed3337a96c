#!/usr/bin/env bash
# `dvc pull` (or `dvc checkout`) without making Snakemake rerun everything afterwards.
#
#   scripts/dvc_pull.sh [DVC PULL ARGS...]       dvc pull, then the mtime fix below
#   scripts/dvc_pull.sh --checkout [ARGS...]     dvc checkout instead (no remote needed)
#
# The pitfall: DVC writes the files it checks out now, in its own order. Snakemake decides what
# to rerun from modification times, so freshly pulled data/ (or pulled results in the wrong
# order) looks newer than the results made from it, and every job downstream reruns.
#
# The fix: when `dvc status` is clean after the pull, i.e. data/, config/, src/, workflow/ and the
# stage's outputs are exactly what dvc.lock recorded for the last `dvc repro`, the results on disk
# were made from the inputs on disk and only their times are wrong: `snakemake --touch` then
# re-stamps the existing outputs in DAG order (missing ones stay missing and will be made).
# When anything differs, nothing is touched and Snakemake reruns what the change needs; touching
# then would hide a real change (--touch also records the current params as up to date).
#
# Environment: SNAKEMAKE_ARGS, extra arguments for `snakemake --touch` (targets, --config ...;
# use the same ones as the stage's command), FORCE_TOUCH=1 touches even when `dvc status` is not
# clean (only when you know the results match the inputs). dvc and snakemake come from
# .venv/bin when it exists, else from PATH.
set -euo pipefail

cd "$(git rev-parse --show-toplevel 2>/dev/null || pwd)"

bin() {
    if [[ -x .venv/bin/$1 ]]; then echo ".venv/bin/$1"; else echo "$1"; fi
}
DVC=$(bin dvc)
SNAKEMAKE=$(bin snakemake)

if [[ ${1:-} == --checkout ]]; then
    shift
    "$DVC" checkout "$@"
else
    "$DVC" pull "$@"
fi

if "$DVC" status --quiet || [[ ${FORCE_TOUCH:-0} == 1 ]]; then
    echo "dvc_pull: workspace matches dvc.lock; re-stamping Snakemake's outputs (snakemake --touch)"
    # shellcheck disable=SC2086  # SNAKEMAKE_ARGS is a list of words
    "$SNAKEMAKE" --touch --cores 1 ${SNAKEMAKE_ARGS:-}
else
    echo "dvc_pull: workspace differs from dvc.lock (see \`dvc status\`); not touching:" \
        "Snakemake will rerun what the change needs (FORCE_TOUCH=1 to touch anyway)"
fi
