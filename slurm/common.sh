# Shared pieces of the vidworld SLURM scripts; sourced (not run) by slurm/*.sbatch inside a job.
#
#   vidworld_setup               needs VIDWORLD_REPO; sets VIDWORLD (the CLI), MASTER_ADDR/PORT, DS_ACCELERATOR
#   vidworld_srun_requeue CMD…   srun CMD on every task; on exit code 75 (preempted, checkpoint saved),
#                                or any failure after a SIGUSR1, requeue this job so it resumes by
#                                itself (and set VIDWORLD_REQUEUED=1); otherwise returns CMD's exit code
#   vidworld_ray_cluster         start Ray in this allocation (head here, one worker per other node);
#                                sets RAY_ADDRESS; vidworld_ray_stop ends it
#
# Preemption: the job asks SLURM for SIGUSR1 before its time limit (--signal=B:USR1@120). "B:"
# sends it to this batch shell only, which forwards it to the srun step (srun passes USR1 on to
# every task). Each training process then saves at its next step boundary and exits 75; a USR1
# sent to the steps directly (scancel --signal=USR1 JOBID) reaches the same exit. SIGTERM is left
# alone on purpose: scancel and the hard time limit still end the job without a requeue.

PREEMPTED_EXIT_CODE=75  # runtime.train.PREEMPTED_EXIT_CODE

vidworld_log() { echo "[vidworld-slurm $(date -u +%H:%M:%S)] $*"; }

vidworld_setup() {
  : "${VIDWORLD_REPO:?set VIDWORLD_REPO to the vidworld checkout before vidworld_setup}"
  export VIDWORLD_REPO
  # The CLI: VIDWORLD_VENV, else the checkout's .venv, else whatever `vidworld` is on PATH.
  local venv="${VIDWORLD_VENV:-$VIDWORLD_REPO/.venv}"
  if [[ -x "$venv/bin/vidworld" ]]; then
    VIDWORLD="$venv/bin/vidworld"
  elif command -v vidworld >/dev/null; then
    VIDWORLD=$(command -v vidworld)
  else
    echo "vidworld-slurm: no vidworld CLI in $venv/bin nor on PATH; set VIDWORLD_VENV=/path/to/venv" \
         "(see README: make venv)" >&2
    return 2
  fi
  export VIDWORLD

  # Rendezvous for init_distributed(): the first host of the allocation. The port is fixed per job
  # and attempt, so every task agrees on it without talking, and a requeued attempt does not meet
  # the previous attempt's socket still in TIME_WAIT.
  local head head_addr
  head=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n1)
  # SLURM's own address for that node (NodeAddr), which works where the bare name does not resolve.
  head_addr=$(scontrol show node "$head" 2>/dev/null | sed -n 's/.*NodeAddr=\([^ ]*\).*/\1/p' | head -n1)
  MASTER_ADDR="${head_addr:-$head}"
  MASTER_PORT=$((15000 + (SLURM_JOB_ID + 7919 * ${SLURM_RESTART_COUNT:-0}) % 20000))
  export MASTER_ADDR MASTER_PORT

  # DeepSpeed picks its accelerator at import; without a GPU it must be told.
  if ! { command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1; }; then
    export DS_ACCELERATOR=cpu
  fi
  # Each task's rank comes from SLURM_PROCID; a RANK/WORLD_SIZE left in the submitting shell would
  # make init_distributed() take the torchrun path instead.
  unset RANK LOCAL_RANK WORLD_SIZE LOCAL_WORLD_SIZE
  export OMP_NUM_THREADS="${OMP_NUM_THREADS:-${SLURM_CPUS_PER_TASK:-1}}"
  export PYTHONUNBUFFERED=1
  vidworld_log "job $SLURM_JOB_ID attempt $((${SLURM_RESTART_COUNT:-0} + 1)): ${SLURM_NNODES:-1} node(s)," \
    "${SLURM_NTASKS:-1} task(s), master $MASTER_ADDR:$MASTER_PORT, repo $VIDWORLD_REPO," \
    "accelerator ${DS_ACCELERATOR:-cuda}"
}

vidworld_srun_requeue() {
  local srun_pid="" rc warned=0
  # Forward the early-warning signal to the training step (srun passes it on to every task).
  trap 'warned=1; vidworld_log "got SIGUSR1: asking the training processes to save and stop";
        [[ -n "$srun_pid" ]] && kill -USR1 "$srun_pid" 2>/dev/null' USR1
  # kill-on-bad-exit=1 (whatever the cluster's default): a task that dies or fails ends the step at
  # once, instead of leaving the others waiting in a collective (or a hung one alive after they gave
  # up). A preempted run's ranks leave together after their last write (runtime.train.train), so a
  # rank that exits 75 first stops no one mid-checkpoint.
  srun --kill-on-bad-exit=1 --label "$@" &
  srun_pid=$!
  # `wait` returns early (rc > 128) whenever a trapped signal arrives: wait again until srun is gone.
  while true; do
    wait "$srun_pid"
    rc=$?
    kill -0 "$srun_pid" 2>/dev/null || break
  done
  trap - USR1
  # Requeue on 75, and also on any failure after the warning: a process still starting up (before
  # its handler is installed) dies of the USR1 instead of saving, and the requeued job then
  # resumes from the last complete checkpoint. A run that finished (0) is never requeued.
  if [[ $rc -eq $PREEMPTED_EXIT_CODE || ($warned -eq 1 && $rc -ne 0) ]]; then
    vidworld_log "training stopped (exit $rc) after saving what it could: requeueing job $SLURM_JOB_ID"
    if scontrol requeue "$SLURM_JOB_ID"; then
      VIDWORLD_REQUEUED=1  # the caller stops here: this attempt is over, the next one resumes
      return 0
    fi
    vidworld_log "scontrol requeue failed (submit with --requeue?); resubmit the same command to resume"
  else
    vidworld_log "training exited $rc"
  fi
  return "$rc"
}

vidworld_ray_cluster() {
  # Ray for the data stages (curate, tokenize): the head on this (the first) node, a worker on each
  # other node through srun, all with this job's own auth token (Ray 2.60 turns token auth on for
  # any head once ~/.ray/auth_token exists; drivers then need the same token).
  local ray_bin port head_addr cpus
  ray_bin="$(dirname "$VIDWORLD")/ray"
  [[ -x "$ray_bin" ]] || ray_bin=$(command -v ray) || { echo "vidworld-slurm: no ray CLI" >&2; return 2; }
  port=$((20000 + (SLURM_JOB_ID % 2000) * 10))
  head_addr="$MASTER_ADDR"
  cpus="${SLURM_CPUS_ON_NODE:-$(nproc)}"
  export RAY_AUTH_MODE=token
  RAY_AUTH_TOKEN=$(python3 -c 'import secrets; print(secrets.token_hex(32))')
  export RAY_AUTH_TOKEN
  VIDWORLD_RAY_TMP=$(mktemp -d /tmp/vidworld-ray-XXXXXX)
  # A head of our own in its own session, stopped by session id: `ray stop` would kill every Ray
  # process on the node, other jobs' included.
  # Agent ports next to the head's port, not Ray's defaults, which another Ray on the node may hold.
  setsid "$ray_bin" start --head --block --node-ip-address="$head_addr" --port="$port" --num-cpus="$cpus" \
    --include-dashboard=false --temp-dir="$VIDWORLD_RAY_TMP" --disable-usage-stats \
    --dashboard-agent-listen-port=$((port + 1)) --dashboard-agent-grpc-port=$((port + 2)) \
    --metrics-export-port=$((port + 3)) --runtime-env-agent-port=$((port + 4)) \
    --ray-client-server-port=$((port + 5)) --node-manager-port=$((port + 6)) --object-manager-port=$((port + 7)) \
    >"$VIDWORLD_RAY_TMP/head.log" 2>&1 &
  VIDWORLD_RAY_HEAD=$!
  local waited=0
  until grep -q "Ray runtime started" "$VIDWORLD_RAY_TMP/head.log" 2>/dev/null; do
    if ! kill -0 "$VIDWORLD_RAY_HEAD" 2>/dev/null || (( waited >= 120 )); then
      echo "vidworld-slurm: the Ray head did not start; its log:" >&2
      cat "$VIDWORLD_RAY_TMP/head.log" >&2
      return 2
    fi
    sleep 1
    waited=$((waited + 1))
  done
  if (( ${SLURM_NNODES:-1} > 1 )); then
    srun --nodes=$((SLURM_NNODES - 1)) --ntasks=$((SLURM_NNODES - 1)) --ntasks-per-node=1 \
      --exclude="$(hostname -s)" --kill-on-bad-exit=0 \
      "$ray_bin" start --address="$head_addr:$port" --block --disable-usage-stats &
    VIDWORLD_RAY_WORKERS=$!
  fi
  export RAY_ADDRESS="$head_addr:$port"
  vidworld_log "Ray head at $RAY_ADDRESS (${SLURM_NNODES:-1} node(s))"
}

vidworld_ray_stop() {
  [[ -n "${VIDWORLD_RAY_WORKERS:-}" ]] && kill "$VIDWORLD_RAY_WORKERS" 2>/dev/null
  if [[ -n "${VIDWORLD_RAY_HEAD:-}" ]]; then
    # The head and everything it started share the session that setsid made (its id is the head's pid).
    pkill -TERM -s "$VIDWORLD_RAY_HEAD" 2>/dev/null
    for _ in 1 2 3 4 5; do pgrep -s "$VIDWORLD_RAY_HEAD" >/dev/null || break; sleep 1; done
    pkill -KILL -s "$VIDWORLD_RAY_HEAD" 2>/dev/null
  fi
  [[ -n "${VIDWORLD_RAY_TMP:-}" ]] && rm -rf "$VIDWORLD_RAY_TMP"
  unset RAY_ADDRESS
}
