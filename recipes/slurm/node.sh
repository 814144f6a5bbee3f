#!/usr/bin/env bash
# One node's task of recipes/slurm/pretrain.sbatch (srun starts one per node): an `accelerate
# launch` of GPUS_PER_NODE training processes that joins the job's rendezvous at HEAD:PORT as
# machine SLURM_NODEID of SLURM_NNODES. VSSL_ACCELERATE_CONFIG (optional) names an accelerate
# config, e.g. recipes/accelerate/deepspeed_zero2.yaml; without it the node runs DDP.
#   bash recipes/slurm/node.sh RECIPE [--set k=v ...]     (environment: see pretrain.sbatch)
# SIGUSR1 reaching this script goes to the training processes (the launcher's children), which
# checkpoint and exit 0; the launcher itself ignores it and exits once they have.
set -uo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/wait.sh"
: "${SLURM_NNODES:?}" "${SLURM_NODEID:?}" "${GPUS_PER_NODE:?}" "${HEAD:?}" "${PORT:?}"

args=(--num_machines "$SLURM_NNODES" --machine_rank "$SLURM_NODEID"
      --num_processes "$((SLURM_NNODES * GPUS_PER_NODE))"
      --main_process_ip "$HEAD" --main_process_port "$PORT" --rdzv_backend static)
if [ -n "${VSSL_ACCELERATE_CONFIG:-}" ]; then
  args=(--config_file "$VSSL_ACCELERATE_CONFIG" "${args[@]}")
else
  args=(--multi_gpu "${args[@]}")
fi

trap '' USR1  # inherited as ignored by the launcher; the trainer installs its own handler
accelerate launch "${args[@]}" -m pipeline.cli pretrain "$@" &
launcher=$!
trap 'pkill -USR1 -P "$launcher"' USR1
wait_through_traps "$launcher"
