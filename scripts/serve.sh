# Sourced by the suites that try salesflow with clients we did not write
# (scripts/api-contract, scripts/foreign-clients): `serve NAME ADDRESS` builds the release
# host, runs the default pipeline.toml's pipelines on ADDRESS against the local stack,
# stops them when the calling script exits, and returns once they answer ready (or fails,
# naming NAME, if the process exits first or is not ready within 60 s).
serve() {
  local name="$1" address="$2"
  cargo build --release --quiet -p salesflow
  "$CARGO_TARGET_DIR/release/salesflow" --config pipeline.toml \
    --set "server.address=$address" --set log.level=warn run &
  served_pid=$!
  trap 'kill "$served_pid" 2>/dev/null; wait "$served_pid" 2>/dev/null || true' EXIT
  for _ in $(seq 1 120); do
    curl -fsS "http://$address/health/ready" >/dev/null 2>&1 && return 0
    kill -0 "$served_pid" 2>/dev/null || { echo "$name: salesflow exited" >&2; return 1; }
    sleep 0.5
  done
  curl -fsS "http://$address/health/ready" >/dev/null \
    || { echo "$name: salesflow not ready on $address after 60 s" >&2; return 1; }
}
