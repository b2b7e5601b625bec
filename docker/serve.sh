#!/bin/sh
# Container entry point of the `torchserve` service: TorchServe in the foreground.
# Runs under `tini -g` (see docker/Dockerfile), so `docker stop` delivers SIGTERM to the
# launcher, the Java frontend and the workers, and the container stops when TorchServe does.
# Extra arguments are passed on to `torchserve`.
set -eu
cd /app

store="${MODEL_STORE:-model_store}"
if [ ! -f "$store/bert_sentiment.mar" ] && [ -z "${SERVE_ALLOW_EMPTY_STORE:-}" ]; then
    echo "serve: $store/bert_sentiment.mar not found." >&2
    echo "serve: create it first, e.g. 'docker-compose run --rm model-init' (a quick model)," >&2
    echo "serve: or on the host: python -m training --preset full --output-dir runs/full &&" >&2
    echo "serve:   python -m training.archive runs/full --model-store model_store" >&2
    exit 1
fi

# TorchServe's own messages for a damaged archive are obscure: say it plainly and stop.
python - "$store/bert_sentiment.mar" <<'PY' || exit 1
import sys, zipfile
path = sys.argv[1]
try:
    archive = zipfile.ZipFile(path)
    broken = archive.testzip()
    manifest = "MAR-INF/MANIFEST.json" in archive.namelist()
except (OSError, zipfile.BadZipFile) as error:
    sys.exit(f"serve: {path} is not a valid model archive ({error})")
if broken or not manifest:
    sys.exit(f"serve: {path} is damaged ({'corrupt member ' + broken if broken else 'no MAR-INF/MANIFEST.json'})")
PY

# A `docker restart` keeps /tmp: drop the launcher's pid file from the previous run, or it
# may take an unrelated process for a TorchServe that is still running.
rm -f "${TMPDIR:-/tmp}/.model_server.pid"

exec torchserve --start --foreground \
    --ts-config "${TS_CONFIG_FILE:-serving/config.properties}" \
    --model-store "$store" \
    --disable-token-auth --ncs "$@"
