#!/usr/bin/env bash
# The demo cluster: scripts/cluster.sh start | stop | status
source "$(dirname "$0")/lib.sh"
PGDATA_DEMO=$RAGTUNE_HOME/demo/pgdata
PORT=$(pin cluster.demo_port)
case "${1:-status}" in
  start) install -d -m 755 "$RAGTUNE_HOME/demo"; cluster_start "$PGDATA_DEMO" "$PORT" ;;
  stop) cluster_stop "$PGDATA_DEMO" ;;
  status) as_postgres "$PG_BIN/pg_ctl" -D "$PGDATA_DEMO" status ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
