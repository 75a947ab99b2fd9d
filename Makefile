# One command each for a new user: `make demo` and `make test`. Both install Erlang/Elixir
# first when the machine lacks them (see scripts/ensure_toolchain.sh).
SHELL := /bin/bash
export LANG ?= C.UTF-8
export LC_ALL ?= C.UTF-8

.PHONY: all test demo bench lint toolchain python rust-test python-test elixir-test clean

# The Python workers' interpreter: a virtual environment with the dspex_bridge package.
export DSPEX_PYTHON ?= $(CURDIR)/_build/dspex_python/bin/python

all: test

toolchain:
	@scripts/ensure_toolchain.sh

# cargo test uses the release profile so the NIF build that `mix test` triggers reuses the
# same compiled dependencies.
rust-test: toolchain
	cargo test --workspace --release
	@# Each of dspex_core's features alone builds and passes its tests.
	for f in acl analytics breaker coordinator graph ha rate_limit; do \
	  cargo test --release -q -p dspex_core --no-default-features --features $$f || exit 1; \
	done

# The Python side: a virtual environment made (once) by `mix dspex.python.setup`, with DSPy
# for the dspex_bridge.dspy tests and the demo.
python: toolchain
	MIX_ENV=test mix dspex.python.setup --path _build/dspex_python --dspy

# The Python SDK's own tests (unittest, in the environment above).
python-test: python
	$(DSPEX_PYTHON) -m unittest discover -s test/python -v

elixir-test: python
	MIX_ENV=test mix test

test: rust-test python-test elixir-test

demo: python
	mix dspex.demo

lint: toolchain
	cargo fmt --all -- --check
	cargo clippy --workspace --release --all-targets -- -D warnings
	RUSTDOCFLAGS="-D warnings" cargo doc --no-deps -p dspex_core
	mix format --check-formatted
	MIX_ENV=test mix compile --warnings-as-errors --force
	scripts/dialyzer.sh

bench: python
	cargo bench -p dspex_benches
	MIX_ENV=prod mix run benches/session_store.exs
	MIX_ENV=prod mix run benches/dependency_graph.exs
	MIX_ENV=prod mix run benches/access_control.exs
	MIX_ENV=prod mix run benches/circuit_breaker.exs
	MIX_ENV=prod mix run benches/coordinator.exs
	MIX_ENV=prod mix run benches/analytics.exs
	MIX_ENV=prod mix run benches/python_bridge.exs
	MIX_ENV=prod mix run benches/redis_backend.exs
	MIX_ENV=prod elixir --erl "+sbwt none +sbwtdcpu none +sbwtdio none" -S mix run benches/ha.exs

clean:
	cargo clean
	rm -rf _build priv/native
