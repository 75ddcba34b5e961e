#!/usr/bin/env bash
# Remove one class from a trained classifier through gif-service, from a pipeline step.
#
#   GIF_BASE_URL=http://127.0.0.1:8000 GIF_API_KEY=... RUN_ID=nightly-2024-06-01 \
#     ./remove_class.sh model.safetensors train.safetensors 3 ./edited
#
# Uploads the checkpoint and the training set (uploads are deduplicated by content, so a rerun
# re-uses them), submits a class-removal job with an idempotency key derived from RUN_ID (a rerun
# of the same pipeline run gets the same job instead of a second one), waits, and downloads the
# result artifacts (weights, report, plot) into OUTPUT_DIR. The exit code is the CLI's: see README.md.
set -euo pipefail

CHECKPOINT=${1:?usage: remove_class.sh CHECKPOINT DATASET CLASS [OUTPUT_DIR]}
DATASET=${2:?usage: remove_class.sh CHECKPOINT DATASET CLASS [OUTPUT_DIR]}
CLASS=${3:?usage: remove_class.sh CHECKPOINT DATASET CLASS [OUTPUT_DIR]}
OUTPUT_DIR=${4:-./gif-results}
RUN_ID=${RUN_ID:?set RUN_ID to a stable id of this pipeline run}
TIMEOUT=${GIF_WAIT_TIMEOUT:-21600}
# The model architecture the checkpoint was trained with (a registered gif architecture).
ARCH=${GIF_ARCH:-mlp}
ARCH_CONFIG=${GIF_ARCH_CONFIG:-'{"input_shape": [1, 8, 8], "hidden_sizes": [32], "num_classes": 10}'}
GIF=${GIF_CLI:-gif-service}

json_field() { python3 -c 'import json, sys; print(json.load(sys.stdin)[sys.argv[1]])' "$1"; }

checkpoint_id=$($GIF upload "$CHECKPOINT" --kind checkpoint | json_field id)
dataset_id=$($GIF upload "$DATASET" --kind dataset | json_field id)
echo "checkpoint=$checkpoint_id dataset=$dataset_id" >&2

body=$(mktemp)
trap 'rm -f "$body"' EXIT
cat >"$body" <<JSON
{
  "type": "remove",
  "model": {"arch": "$ARCH", "config": $ARCH_CONFIG, "checkpoint": "$checkpoint_id"},
  "train": "$dataset_id",
  "forget": {"class": $CLASS},
  "options": {"method": "gif", "selection": "highest_outputs", "ratio": 0.05}
}
JSON

mkdir -p "$OUTPUT_DIR"
# stdout: the final job JSON; stderr: progress. Non-zero exit fails the pipeline step.
$GIF submit "$body" --wait --timeout "$TIMEOUT" \
  --idempotency-key "${RUN_ID}-remove-class-${CLASS}" \
  --output "$OUTPUT_DIR" >"$OUTPUT_DIR/job.json"
echo "done: $(ls "$OUTPUT_DIR")" >&2
