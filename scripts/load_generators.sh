#!/usr/bin/env bash
# Registers the generators (converted from their GGUFs by convert_generators.sh, which runs
# first and skips what is done) in database $2 on the local cluster at port $1, and lets
# every role use them. A model is registered again when its converted files change (its
# config, or the size of its graph: a new weight format keeps the config).
#   load_generators.sh PORT DB
source "$(dirname "$0")/lib.sh"
PORT=$1 DB=$2
"$ROOT/scripts/convert_generators.sh"
mapfile -t keys < <(pin generators.convert)
for key in "${keys[@]}"; do
  name=$(pin "generators.$key.name")
  dir=$MODELS/$name
  registered=$(psql_at "$PORT" "$DB" -Atc "SELECT config = pg_read_file('$dir/config.json')::jsonb
    AND onnx_bytes = $(stat -c %s "$dir/model.onnx") FROM ragtune_models WHERE name = '$name'")
  if [ "$registered" != t ]; then
    log "registering the generator $name ($(du -sh "$dir/model.onnx" | cut -f1) of ONNX)"
    psql_at "$PORT" "$DB" -q -v name="$name" -v dir="$dir" >/dev/null <<'SQL'
SET client_min_messages = warning;
SELECT register_model_from_files(:'name', :'dir', replace => true);
SELECT grant_model(:'name', 'public');
SQL
  fi
done
