#!/usr/bin/env bash
# The test command of journalgate. Works on a fresh Debian 12 machine as root
# (CI runs it with CI=true and no stdin) and from any working directory.
#
#   tests/run.sh                 # everything: fmt, clippy, build, cargo test, e2e suite
#   JG_SKIP_BUILD=1 tests/run.sh -k pop3   # skip the cargo steps; extra args go to pytest
#   JG_TEST_OUTPUT=/tmp/shots tests/run.sh -k console_browser   # also keep the browser screenshots
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

log() { printf '\n==> %s\n' "$*"; }

# ---------------------------------------------------------------- system packages
# chromium + chromium-driver: the console's browser tests (tests/e2e/test_console_browser.py);
# prometheus (with promtool): the metrics tests run their own prometheus process on a free port.
APT_PACKAGES=(swaks libnet-ssleay-perl curl fetchmail getmail6 ca-certificates openssl age pebble isync offlineimap3 neomutt tmux python3-pip
              chromium chromium-driver prometheus)
have_all=1
for cmd in swaks curl fetchmail getmail openssl age pebble pebble-challtestsrv mbsync offlineimap neomutt tmux \
           chromium chromedriver prometheus promtool; do
  command -v "$cmd" >/dev/null 2>&1 || have_all=0
done
[ -e /etc/ssl/certs/ca-certificates.crt ] || have_all=0
# swaks --tls needs Net::SSLeay, which is only a Recommends of the swaks package
perl -MNet::SSLeay -e1 >/dev/null 2>&1 || have_all=0
python3 -m pip --version >/dev/null 2>&1 || have_all=0
if [ "$have_all" = 0 ]; then
  log "installing system packages: ${APT_PACKAGES[*]}"
  SUDO=()
  if [ "$(id -u)" != 0 ]; then
    command -v sudo >/dev/null 2>&1 || { echo "need root (or sudo) to install ${APT_PACKAGES[*]}" >&2; exit 1; }
    SUDO=(sudo -n)
  fi
  # Debian's prometheus package would start its own service (port 9090, /var/lib/prometheus):
  # the tests never use it, so keep package scripts from starting any service while we install
  # (a policy-rc.d answering 101, only if the machine has none; removed again afterwards).
  POLICY_RC=/usr/sbin/policy-rc.d
  made_policy=0
  if [ ! -e "$POLICY_RC" ]; then
    printf '#!/bin/sh\n# tests/run.sh: no service starts during the test package install\nexit 101\n' \
      | "${SUDO[@]}" tee "$POLICY_RC" >/dev/null
    "${SUDO[@]}" chmod 0755 "$POLICY_RC"
    made_policy=1
  fi
  apt_rc=0
  {
    "${SUDO[@]}" apt-get -o DPkg::Lock::Timeout=300 update </dev/null &&
    "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 install -y \
      --no-install-recommends "${APT_PACKAGES[@]}" </dev/null
  } || apt_rc=$?
  if [ "$made_policy" = 1 ]; then "${SUDO[@]}" rm -f "$POLICY_RC"; fi
  [ "$apt_rc" = 0 ] || { echo "installing system packages failed ($apt_rc)" >&2; exit "$apt_rc"; }
fi

# ---------------------------------------------------------------- python packages
log "python test dependencies"
PIP=(python3 -m pip install -q --disable-pip-version-check --root-user-action=ignore -r tests/requirements.txt)
# Debian's own python3 refuses pip installs (PEP 668) unless told that this machine is a test box.
"${PIP[@]}" </dev/null || "${PIP[@]}" --break-system-packages </dev/null

# ---------------------------------------------------------------- rust
if [ "${JG_SKIP_BUILD:-0}" != 1 ]; then
  if ! command -v cargo >/dev/null 2>&1; then
    if [ -x "$HOME/.cargo/bin/cargo" ]; then
      export PATH="$HOME/.cargo/bin:$PATH"
    else
      echo "cargo not found: install the Rust toolchain (rustup) first" >&2
      exit 1
    fi
  fi
  if command -v rustup >/dev/null 2>&1; then
    cargo fmt --version >/dev/null 2>&1 || rustup component add rustfmt </dev/null
    cargo clippy --version >/dev/null 2>&1 || rustup component add clippy </dev/null
  fi
  log "cargo fmt --check"
  cargo fmt --all -- --check
  log "cargo clippy"
  cargo clippy --release --all-targets -- -D warnings
  log "cargo build --release"
  cargo build --release
  log "cargo test --release"
  cargo test --release
  # Fuzzing (bounded): the IMAP, SMTP and POP3 sessions and the MIME structure code.
  if [ "${JG_SKIP_FUZZ:-0}" != 1 ] && cargo +nightly --version >/dev/null 2>&1; then
    command -v cargo-fuzz >/dev/null 2>&1 || cargo install --locked cargo-fuzz </dev/null
    for target in imap_session smtp_session pop3_session message_structure; do
      log "cargo fuzz run $target (${JG_FUZZ_SECONDS:-45} s)"
      (cd fuzz && cargo +nightly fuzz run -s none -O "$target" -- \
        -max_total_time="${JG_FUZZ_SECONDS:-45}" -print_final_stats=1 2>&1 | tail -n 20)
    done
  else
    log "fuzzing skipped (no nightly toolchain, or JG_SKIP_FUZZ=1)"
  fi
else
  log "JG_SKIP_BUILD=1: skipping fmt, clippy, build and cargo test"
fi

[ -x target/release/journalgate ] || { echo "target/release/journalgate missing (build first)" >&2; exit 1; }

# ---------------------------------------------------------------- garage (cluster tests)
# A 3-node Garage cluster on loopback backs tests/e2e/test_cluster.py. Built from crates.io
# only when missing (about 10 minutes on 2 cores), with just the features the tests need.
if ! command -v garage >/dev/null 2>&1 && [ ! -x "$HOME/.cargo/bin/garage" ]; then
  log "cargo install garage (2.5.0, sqlite metadata only)"
  export PATH="$HOME/.cargo/bin:$PATH"
  cargo install garage --locked --version 2.5.0 --no-default-features --features sqlite,bundled-libs </dev/null ||
    cargo install garage --locked --version 2.5.0 </dev/null
fi

# ---------------------------------------------------------------- end-to-end suite
log "end-to-end tests (pytest, 2 workers)"
exec python3 -m pytest -q tests/e2e -n 2 --timeout 300 -p no:cacheprovider -rfEs "$@" </dev/null
