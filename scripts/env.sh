# Sourced by the scripts: one build cache outside the checkout, shared by every clone.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/salesflow/target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
