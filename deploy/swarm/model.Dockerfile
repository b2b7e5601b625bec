# One image per model version: the Swarm replica image plus one archive (readable by all: the
# server runs as uid 1000). The build context is
# the directory that holds bert_sentiment.mar:
#
#   docker build -f deploy/swarm/model.Dockerfile -t 127.0.0.1:5999/bert-sentiment-model:v2 model_store
#
# A rollout is then `docker service update --image ...:v2 bert_torchserve` (or the stack
# deployed again with MODEL_IMAGE=...:v2), a rollback `docker service rollback bert_torchserve`.
ARG REPLICA_IMAGE=127.0.0.1:5999/bert-sentiment-swarm:1
FROM ${REPLICA_IMAGE}
COPY bert_sentiment.mar /app/models/bert_sentiment.mar
ENV MODEL_STORE=/app/models
