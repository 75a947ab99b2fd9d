#!/usr/bin/env bash
# Installs what a fresh machine lacks for `make test` / `make demo`: Erlang/OTP and Elixir from
# Debian packages when `erl` or `mix` is missing, python3 for the worker bridge, promtool
# (package prometheus) to validate the /metrics export, dialyzer (erlang-dialyzer) for
# make lint, redis-server for the Redis backend's tests, python3-venv for the Python
# workers' environment, and a running epmd for the
# distributed tests.
# Rust is a prerequisite (rustup); this script only checks for it.
set -euo pipefail

# Installs Debian packages, with sudo when not root.
apt_install() {
  local sudo=""
  if [ "$(id -u)" != 0 ]; then sudo="sudo"; fi
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update -qq
  $sudo apt-get install -y -qq "$@" >/dev/null
}

need_install=0
command -v erl >/dev/null 2>&1 || need_install=1
command -v mix >/dev/null 2>&1 || need_install=1

if [ "$need_install" = 1 ]; then
  echo "==> Erlang/Elixir not found: installing Debian packages erlang-nox erlang-dev elixir"
  apt_install erlang-nox erlang-dev elixir
fi

if ! command -v python3 >/dev/null 2>&1; then
  echo "==> python3 not found: installing the Debian package python3 (the worker bridge needs it)"
  apt_install python3
fi

# The Python workers' virtual environment (make python) needs venv and pip.
if ! python3 -c "import venv, ensurepip" >/dev/null 2>&1; then
  echo "==> python3 lacks venv/ensurepip: installing the Debian package python3-venv"
  apt_install python3-venv
fi

if ! command -v promtool >/dev/null 2>&1; then
  echo "==> promtool not found: installing the Debian package prometheus (CI validates /metrics with it)"
  apt_install --no-install-recommends prometheus
fi

if ! command -v redis-server >/dev/null 2>&1; then
  echo "==> redis-server not found: installing the Debian package redis-server (the Redis backend's tests start one)"
  apt_install --no-install-recommends redis-server
fi

if ! command -v openssl >/dev/null 2>&1; then
  echo "==> openssl not found: installing the Debian package openssl (the Redis TLS test makes its certificates with it)"
  apt_install --no-install-recommends openssl
fi

if ! command -v dialyzer >/dev/null 2>&1; then
  echo "==> dialyzer not found: installing the Debian package erlang-dialyzer (make lint runs it)"
  apt_install erlang-dialyzer
fi

if ! command -v cargo >/dev/null 2>&1; then
  echo "error: cargo not found. dspex_bridge builds its NIF from Rust source: install Rust 1.91+ (rustup)." >&2
  exit 1
fi

otp=$(erl -noshell -eval 'io:format("~s", [erlang:system_info(otp_release)]), halt().')
if [ "$otp" -lt 25 ]; then
  echo "error: Erlang/OTP $otp found, 25 or newer is required." >&2
  exit 1
fi

# Distributed tests (HA, :peer nodes) need epmd; starting it twice is harmless.
epmd -daemon >/dev/null 2>&1 || true
