#!/usr/bin/env bash
# Run one FluxForge training stage (pretrain | continual@TASK | distill) on several GPUs with DeepSpeed ZeRO,
# then record its outputs in dvc.lock as `dvc repro` would have.
#
# Why not `dvc repro`: DVC runs a stage's `cmd` once, but a multi-GPU run needs one process per GPU,
# started by a launcher. So the launcher starts the stage module on every GPU, and `dvc commit` records
# the outputs afterwards (same deps, params and outs as the stage in dvc.yaml).
#
#   infra/deepspeed/launch.sh pretrain                                    # every GPU of this node, ZeRO-2
#   ZERO=3 NUM_GPUS=4 infra/deepspeed/launch.sh continual@cyber
#   HOSTFILE=~/hostfile infra/deepspeed/launch.sh distill                 # several nodes, from the first one (ssh + pdsh)
#   HOSTFILE=~/hostfile NODE_RANK=0 MASTER_ADDR=node1 infra/deepspeed/launch.sh pretrain  # on each node, no ssh
#   LAUNCHER=torchrun NNODES=2 NODE_RANK=0 MASTER_ADDR=node1 infra/deepspeed/launch.sh pretrain   # on each node
#   DRY_RUN=1 infra/deepspeed/launch.sh pretrain                          # print the command only
#
# Environment: ZERO (1|2|3, default 2), NUM_GPUS (default: all), LAUNCHER (deepspeed|torchrun), HOSTFILE,
# MASTER_ADDR, MASTER_PORT (29500), NNODES/NODE_RANK (torchrun; NODE_RANK with HOSTFILE: deepspeed --no_ssh), FLUXFORGE_DVC_COMMIT (1: dvc commit after).
# Every rank's train() reads the ZeRO config from FLUXFORGE_DEEPSPEED_CONFIG (src/fluxforge/train/engine.py) and
# trains its share of each batch; params.yaml keeps the global batch size, clipping, AdamW and LR schedule.
# DS_ACCELERATOR defaults to cuda here; on a CPU-only machine set DS_ACCELERATOR=cpu (and NUM_GPUS = processes).
# Credentials (AWS_*, MLflow) must already be in each node's environment or role: this script never writes them anywhere.
set -euo pipefail

stage=${1:?usage: launch.sh STAGE   (pretrain | continual@TASK | distill)}
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
zero=${ZERO:-2}
config="$root/infra/deepspeed/zero${zero}.json"
[[ -f $config ]] || { echo "launch.sh: no ZeRO config $config (ZERO must be 1, 2 or 3)" >&2; exit 2; }

case $stage in
  pretrain | distill) module=("stages.$stage") ;;
  continual@?*) module=(stages.continual "${stage#continual@}") ;;
  *) echo "launch.sh: '$stage' is not a training stage (pretrain, continual@TASK, distill)" >&2; exit 2 ;;
esac

[[ -n ${HOSTFILE:-} ]] && HOSTFILE=$(readlink -f "$HOSTFILE")   # before the cd below
export FLUXFORGE_DEEPSPEED_CONFIG=$config DS_ACCELERATOR=${DS_ACCELERATOR:-cuda} DVC_NO_ANALYTICS=1
[[ -x $root/.venv/bin/python ]] && export PATH="$root/.venv/bin:$PATH"
cd "$root"

launcher=${LAUNCHER:-deepspeed}
port=${MASTER_PORT:-29500}
case $launcher in
  deepspeed)
    # --no_local_rank: the stage modules take their own arguments; LOCAL_RANK is in the environment anyway.
    cmd=(deepspeed --no_local_rank --master_port "$port")
    [[ -n ${NUM_GPUS:-} ]] && cmd+=(--num_gpus "$NUM_GPUS")
    [[ -n ${MASTER_ADDR:-} ]] && cmd+=(--master_addr "$MASTER_ADDR")
    if [[ -n ${HOSTFILE:-} && -n ${NODE_RANK:-} ]]; then
      # No ssh: this node starts its own ranks (run the same line on every host of the hostfile, NODE_RANK 0..N-1);
      # they meet at MASTER_ADDR (node 0). For clusters without passwordless ssh or pdsh (a scheduler starts one
      # launcher per node), and the loopback test of two "nodes" (tests/test_deepspeed_multinode.py).
      : "${MASTER_ADDR:?set MASTER_ADDR (node 0) with HOSTFILE and NODE_RANK}"
      cmd+=(--hostfile "$HOSTFILE" --no_ssh --node_rank "$NODE_RANK")
    elif [[ -n ${HOSTFILE:-} ]]; then
      # The pdsh launcher forwards only some variables (MLFLOW*, PYTHON*, NCCL*); pass ours through an env file.
      envfile=$(mktemp)
      trap 'rm -f "$envfile"' EXIT
      printf '%s\n' "FLUXFORGE_DEEPSPEED_CONFIG=$config" "DS_ACCELERATOR=$DS_ACCELERATOR" "DVC_NO_ANALYTICS=1" > "$envfile"
      export DS_ENV_FILE=$envfile
      cmd+=(--hostfile "$HOSTFILE")
    fi
    cmd+=(--module "${module[@]}")
    ;;
  torchrun)
    cmd=(torchrun --nproc_per_node "${NUM_GPUS:-gpu}")
    if (( ${NNODES:-1} > 1 )); then
      cmd+=(--nnodes "$NNODES" --node_rank "${NODE_RANK:?set NODE_RANK (0 on the first node)}"
            --master_addr "${MASTER_ADDR:?set MASTER_ADDR (the first node)}" --master_port "$port")
    else
      cmd+=(--standalone)
    fi
    cmd+=(-m "${module[@]}")
    ;;
  *) echo "launch.sh: LAUNCHER must be deepspeed or torchrun, not '$launcher'" >&2; exit 2 ;;
esac

if [[ ${DRY_RUN:-0} == 1 ]]; then
  echo "FLUXFORGE_DEEPSPEED_CONFIG=$config ${cmd[*]}"
  exit 0
fi
"${cmd[@]}"

# Rank 0 wrote the outputs on this node (the first host, or torchrun's NODE_RANK 0): record them.
if [[ ${FLUXFORGE_DVC_COMMIT:-1} == 1 && ${NODE_RANK:-0} == 0 ]]; then
  dvc commit --force "$stage"
fi
