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
  # the loaded config's path (a shipped name such as `cpu`, or a path relative to the pipeline YAML)
  accel=$(python -c "import sys; from alignment.config import load_pipeline; print(load_pipeline(sys.argv[1]).accelerate_config)" "$pipeline")
fi
# shellcheck disable=SC2086
exec accelerate launch --config_file "$accel" ${ACCELERATE_ARGS:-} -m "alignment.stages.$stage" --config "$pipeline" "$@"
