#!/usr/bin/env bash
# The main job on embedded defaults: set up, build and install ragtune, start a local
# cluster on 127.0.0.1, load real data, and answer queries. Safe to rerun.
source "$(dirname "$0")/lib.sh"
glove_database ragtune
demo() { psql_at "$PORT" ragtune "$@"; }

log "nearest neighbours by exact cosine distance (sequential scan over 400,000 vectors)"
demo <<'SQL'
\timing on
SELECT q.word AS query,
       string_agg(n.word || ' (' || round(n.distance::numeric, 3) || ')', ', ' ORDER BY n.distance) AS nearest
FROM glove q
CROSS JOIN LATERAL (
  SELECT g.word, g.embedding <=> q.embedding AS distance
  FROM glove g
  WHERE g.id <> q.id
  ORDER BY g.embedding <=> q.embedding
  LIMIT 8
) n
WHERE q.word IN ('king', 'paris', 'database')
GROUP BY q.word
ORDER BY array_position(ARRAY['king', 'paris', 'database'], q.word);
SQL

cat <<EOF

The cluster keeps running. Connect with:
  psql -h 127.0.0.1 -p $PORT -U postgres ragtune
Stop it with:
  scripts/cluster.sh stop
EOF
