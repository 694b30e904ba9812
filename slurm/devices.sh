# Sourced by the sbatch scripts, from the repository root: `default_devices "$@"` sets the
# array `devices` to what train_caltech.py gets unless its arguments name a device: the
# GPUs Slurm gave the job (CUDA_VISIBLE_DEVICES lists them, and MXNet numbers the visible
# ones from 0), else one CPU context.
default_devices() {
  devices=()
  if [[ " $* " != *" --gpus"* && " $* " != *" --cpus"* ]]; then
    if [[ -n "${CUDA_VISIBLE_DEVICES:-}" ]]; then
      local count
      count=$(tr ',' '\n' <<< "$CUDA_VISIBLE_DEVICES" | grep -c .)
      devices=(--gpus "$(seq -s, 0 $((count - 1)))")
    else
      devices=(--cpus 1)
    fi
  fi
}
