#!/usr/bin/env bash
# Submit a sharding run to SLURM: a job array of NODES tasks (recipes/slurm/shard_array.sbatch),
# and a merge job that starts once every task has succeeded. Submit from the repository root:
#   bash recipes/slurm/shard_submit.sh 16 k400.csv --root /data/k400 --out s3://bucket/k400/ --transcode
# ARGS are `vssl shard` arguments, the same for every task and the merge.
set -euo pipefail
NODES=${1:?usage: bash recipes/slurm/shard_submit.sh NODES INPUT --out OUT [vssl shard options]}
shift
export VSSL_SHARD_NODES=$NODES  # sbatch passes the environment on to both jobs
script="$(dirname "${BASH_SOURCE[0]}")/shard_array.sbatch"
array=$(sbatch --parsable --array="0-$((NODES - 1))" "$script" "$@")
array=${array%%;*}  # "id;cluster" on a multi-cluster setup
merge=$(sbatch --parsable --dependency="afterok:$array" --cpus-per-task=2 --job-name=vssl-shard-merge \
  --output=%x-%j.out "$script" "$@")
echo "vssl shard: array job $array ($NODES nodes), then merge job $merge"
