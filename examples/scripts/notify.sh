#!/bin/sh
# Turn a JSON array of alerts into courier messages, one per alert, keyed so
# that a re-run of the same script posts nothing twice.
#   ./notify.sh alerts.json            (enqueue on PATH, REDIS_URL set)
# Exit status is enqueue's: 0 all enqueued (duplicates included),
# 2 some alerts invalid (the others enqueued), 1 Redis or other failure.
set -eu
jq -c '.[] | {roomId: .room, markdown: ("**" + .title + "**\n" + .detail), key: ("alert/" + .id)}' "$1" \
  | "${ENQUEUE:-enqueue}" --jsonl -
