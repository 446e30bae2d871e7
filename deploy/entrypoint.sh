#!/bin/sh
# Starts the service this image was built for ($BINARY, set by the Dockerfile).
#
# consumer.id must be unique per replica and stable across restarts of the
# same replica. Under `docker compose up --scale consumer=N` every container
# gets its own hostname (its short container id) which survives restarts
# (restart: unless-stopped restarts the same container), so it is the id
# unless FANOUT_CONSUMER_ID is set explicitly. It cannot be done in
# docker-compose.yml: ${HOSTNAME} there is expanded once, on the host, for
# all replicas alike.
set -eu
if [ "${BINARY}" = consumer ] && [ -z "${FANOUT_CONSUMER_ID:-}" ]; then
	FANOUT_CONSUMER_ID="$(hostname)"
	export FANOUT_CONSUMER_ID
fi
exec "/usr/local/bin/${BINARY}" "$@"
