#!/usr/bin/env bash
# Run one stage of a pipeline under accelerate launch.
#   launch/stage.sh STAGE PIPELINE.yaml [ACCELERATE.yaml] [key=value ...]
# The accelerate config defaults to the pipeline's `accelerate_config`. Extra accelerate flags can be passed in
# ACCELERATE_ARGS (e.g. ACCELERATE_ARGS="--num_processes 4").
set -euo pipefail
if [ $# -lt 2 ]; then
  echo "usage: $0 STAGE PIPELINE.yaml [ACCELERATE.yaml] [key=value ...]" >&2
  exit 2
fi
stage=$1; pipeline=$2; shift 2
if [ $# -gt 0 ] && [[ $1 == *.yaml ]]; then
  accel=$1; shift
else
  accel=$(python -c "import sys, yaml; print(yaml.safe_load(open(sys.argv[1])).get('accelerate_config', 'configs/accelerate/cpu.yaml'))" "$pipeline")
fi
# shellcheck disable=SC2086
exec accelerate launch --config_file "$accel" ${ACCELERATE_ARGS:-} -m "alignment.stages.$stage" --config "$pipeline" "$@"
