#!/usr/bin/env bash
# The project's test command: formatting, lints, then every test (unit, integration, doc).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo fmt --check
cargo clippy --all-targets --locked -- -D warnings
# The emulator, wherever the tests use it, puts every buffer between guard pages, so that a kernel
# that reads or writes outside its buffers fails (src/device/gpu/emu.rs).
DARTS_EMU_BOUNDS_CHECK=1 cargo test --locked
