#!/usr/bin/env bash
# One call on the GPU machine (JAX backend, no TensorFlow there): the speed
# benchmark, the real-data experiment, or both, with what they produced packed
# under $OUT (that machine returns at most 8 files of 16 MiB from $OUT).
#
#   bash scripts/gpu_session.sh bench                     # scripts/benchmark.py variants
#   bash scripts/gpu_session.sh experiment [flags...]     # scripts/experiment.py --profile full
#   bash scripts/gpu_session.sh all [flags...]            # both, experiment first
#
# Flags after the stage go to scripts/experiment.py (e.g. --precision
# mixed_bfloat16 --schedule cosine --seeds 0 1 2).
#
# Carried into the working tree (ignored by git through .git/info/exclude):
#   .whl/   keras, namex and optree wheels for Python 3.12 (the image lacks them):
#           python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#             --implementation cp --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
#             -d .whl keras==3.15.1 namex optree
#   .data/  the dataset: cp -r ../shared/data/aerial-dubai .data/
#   .results/  optional: the results folder of an earlier call, unpacked, so
#           finished runs (the teacher first) are reused, not retrained.
#
# Dry run on a CPU: PROFILE=tiny BENCH_ARGS="--size 64 --train-images 32 --epochs 1
# --variants reference,bf16_b64_spe8 --repeats 3" OUT=/tmp/out bash scripts/gpu_session.sh all --epochs 2
#
# The call's parts stop themselves so that what they finished is packed before
# the call's own limit: the experiment (first) after $EXPERIMENT_SECONDS
# (default 360 with the benchmark after it, else $CALL_SECONDS - 40: packing
# takes a few seconds), the benchmark at $CALL_SECONDS (default 560) after the start.
# The benchmark writes its JSON after every figure, so a stopped one keeps them.
set -uo pipefail
stage=${1:-all}
shift || true
out=${OUT:?"OUT must name the folder whose files come back"}
begin=$(date +%s)
if [ -d .whl ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
        --upgrade --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export KERAS_BACKEND=jax PYTHONUNBUFFERED=1
export JAX_COMPILATION_CACHE_DIR=/tmp/jax-cache  # students of every seed share compilations
export SSSI_DATA=${SSSI_DATA:-.data/aerial-dubai}
results=/tmp/results
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true

if [ "$stage" = experiment ] || [ "$stage" = all ]; then
    mkdir -p "$results"
    [ -d .results ] && cp -r .results/. "$results/"
    start=$(date +%s)
    if [ "$stage" = all ]; then limit=${EXPERIMENT_SECONDS:-360}
    else limit=${EXPERIMENT_SECONDS:-$(( ${CALL_SECONDS:-560} - 40 - (start - begin) ))}; fi
    timeout "$limit" python3 scripts/experiment.py --profile "${PROFILE:-full}" \
        --output "$results" "$@" 2>&1 | tee "$out/experiment.log"
    echo "experiment: exit ${PIPESTATUS[0]} after $(( $(date +%s) - start )) s" | tee -a "$out/experiment.log"
    # Metrics, histories and run records; the seed-0 models the report shows;
    # the other seeds' models; checkpoints of unfinished runs, to resume them.
    # A file over 16 MiB does not come back, and three distillers' checkpoints
    # (each holds the teacher) made 41.5 MB: they travel in 15 MB parts,
    # joined again by `cat results_backups.tar.* | tar -x` (the same for
    # results_seed_models.tar.*).
    cd "$results" || exit 1
    pack() { name=$1; shift; [ $# -gt 0 ] && tar -cf "$out/$name" "$@"; }
    pack results_records.tar $(ls metrics.json profile.json models/*.json models/*.csv 2>/dev/null)
    pack results_models.tar $(ls models/teacher.keras models/student_scratch.keras \
        models/student_distilled.keras 2>/dev/null)
    # students 2.1 MB, teachers 7.9 MB each: with the teachers of seeds 1 and 2
    # they pass 16 MiB, so they travel in parts as the checkpoints do
    seeds=$(ls models/student_*_s*.keras models/teacher_s*.keras 2>/dev/null)
    [ -n "$seeds" ] && tar -cf - $seeds | split -b 15M -d - "$out/results_seed_models.tar."
    backups=$(ls -d models/backup_* 2>/dev/null)
    [ -n "$backups" ] && tar -cf - $backups | split -b 15M -d - "$out/results_backups.tar."
    cd - > /dev/null
    ls -la "$out"
fi

if [ "$stage" = bench ] || [ "$stage" = all ]; then
    left=$(( ${CALL_SECONDS:-560} - ($(date +%s) - begin) ))
    echo "benchmark: $left s left"
    [ "$left" -gt 30 ] && timeout "$left" python3 scripts/benchmark.py ${BENCH_ARGS:---train-images 1024 \
        --epochs 4 --repeats 20 --variants reference,device_aug,bf16,bf16_b64,bf16_b64_spe8} \
        --output "$out/benchmark_gpu.json" 2>&1 | tee "$out/benchmark.log"
fi
