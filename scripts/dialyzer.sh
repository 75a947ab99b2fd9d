#!/usr/bin/env bash
# Dialyzer over the library's compiled modules (lib/ only: the dev build), against a PLT of
# OTP and Elixir built once and kept in _build/dialyzer (about 1.5 minutes to build).
set -euo pipefail
cd "$(dirname "$0")/.."
elixir_lib=$(elixir -e 'IO.write(Path.dirname(:code.lib_dir(:elixir)))')
plt=_build/dialyzer/otp$(erl -noshell -eval 'io:format("~s", [erlang:system_info(otp_release)]), halt().')-elixir.plt
mix compile >/dev/null
if [ ! -f "$plt" ]; then
  echo "==> building the Dialyzer PLT $plt (once)"
  mkdir -p _build/dialyzer
  # The PLT's own warnings (OTP's optional ssl, Mix's release tooling) are not ours.
  dialyzer -pa "$elixir_lib/elixir/ebin" --build_plt --output_plt "$plt" \
    --apps erts kernel stdlib crypto inets compiler \
    "$elixir_lib/elixir/ebin" "$elixir_lib/logger/ebin" "$elixir_lib/mix/ebin" >/dev/null || true
  test -f "$plt"
fi
dialyzer -pa "$elixir_lib/elixir/ebin" --plt "$plt" --no_check_plt \
  _build/dev/lib/dspex_bridge/ebin
