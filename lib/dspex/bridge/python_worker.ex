defmodule DSPex.Bridge.PythonWorker do
  @moduledoc """
  Supervised pools of Python workers that serve `@tool` functions (the `dspex_bridge`
  Python package, `priv/python/`).

  Each worker is `python -m dspex_bridge.worker --module ...` behind an Erlang Port opened
  with `:nouse_stdio`: protobuf frames (`priv/proto/dspex_bridge.proto`, encoded in the NIF
  with prost) travel on a private pipe pair (fds 3 and 4, `{:packet, 4}`), so the
  interpreter's stdout and stderr stay free: they reach `Logger`, a line at a time, and a
  `print()` in a tool can never corrupt a frame.

  * A call carries the session it serves; the tool's `ctx` acts as that session only (see
    `DSPex.Bridge.Python`). A worker runs up to `concurrency:` calls at once.
  * A call past its deadline gets `{:error, :timeout}` at the deadline and Python is told
    to cancel it; a worker whose every slot is held by calls that never ended is replaced.
  * A worker that exits or is killed is restarted; its callers get
    `{:error, {:worker_exited, status}}`. An idle worker is pinged every
    `health_interval_ms`; one that does not answer before the next ping is replaced.
  * An exception in a tool is `{:error, {:python, type, message}}`.

  ## Remote workers

  A pool started with `accept_remote: [token: token]` also takes workers that dial in over
  gRPC from anywhere (the server runs inside the NIF, on threads of its own):

      python -m dspex_bridge.worker --connect HOST:PORT --pool NAME --module my_tools

  with the token in the environment variable `DSPEX_BRIDGE_TOKEN` (or `--token`, which
  other users of the machine can read in the process list). A wrong or missing token, a
  pool that does not accept remote workers, or anything but a hello as the first frame is
  refused with a gRPC status and logged. Remote and local workers of a pool serve calls
  alike; a remote worker whose connection drops is gone (its callers get
  `{:error, {:worker_exited, :disconnected}}`) and the SDK dials again. The server listens
  on `config :dspex_bridge, :grpc, host: "127.0.0.1", port: 0` (port 0: a free one), from
  the first pool that accepts remote workers; `listen_address/0` tells where. The stream is
  plain HTTP/2: across machines, run it on a private network or behind a TLS proxy.

  ## Example

      {:ok, _} = DSPex.Bridge.PythonWorker.start_pool(:tools, modules: ["my_tools"], size: 2)
      {:ok, "pong"} = DSPex.Bridge.PythonWorker.call(:tools, "ping", %{})

  or in a supervision tree: `{DSPex.Bridge.PythonWorker, name: :tools, modules: ["my_tools"]}`.

  The interpreter is `python:` (default: the `:dspex_bridge, :python` setting, else the
  `DSPEX_PYTHON` environment variable, else `python3` on the PATH); it needs the packages
  `protobuf` and `grpcio` (`mix dspex.python.setup` makes a virtual environment with them).
  """

  alias DSPex.Bridge.Options
  alias DSPex.Bridge.PythonWorker.{Listener, Pool, Worker}
  import DSPex.Bridge.Options, only: [is_id: 1]

  @registry DSPex.Bridge.PythonWorker.Registry
  # pool => the workers that serve it now (local and remote), with their slot.
  @members DSPex.Bridge.PythonWorker.Members
  @pools DSPex.Bridge.PythonWorker.Pools

  # The most interpreters one pool starts, and the most calls one runs at once.
  @max_size 256
  @max_concurrency 256
  # Python reads frames of at most 64 MiB.
  @max_request_bytes 64 * 1024 * 1024
  # Frames over this are encoded and decoded on a dirty scheduler.
  @dirty_bytes 64 * 1024
  # Remote tokens are secrets; short ones are guessable.
  @min_token_bytes 16

  @type pool :: atom() | String.t()

  @doc """
  A child spec. `{DSPex.Bridge.PythonWorker, name: :tools, modules: [...]}` is a pool in
  the caller's supervision tree (options as `start_pool/2`).
  """
  def child_spec(:system) do
    %{id: __MODULE__, type: :supervisor, start: {__MODULE__, :start_system, []}}
  end

  # Options are checked when the pool starts: a bad list makes a child that refuses to start
  # with the reason, as `start_pool/2` would answer.
  def child_spec(opts) do
    name = if keyword?(opts), do: Keyword.get(opts, :name), else: :invalid

    %{
      id: {__MODULE__, name},
      type: :supervisor,
      start: {__MODULE__, :start_link, [opts]}
    }
  end

  @doc "Starts a pool linked to the caller (what the child spec runs)."
  @spec start_link(keyword()) :: {:ok, pid()} | {:error, term()}
  def start_link(opts) do
    if keyword?(opts) do
      case Keyword.pop(opts, :name, :none) do
        {:none, _} -> {:error, {:invalid_option, {:missing, :name}}}
        {name, opts} -> with {:ok, config} <- config(name, opts), do: Pool.start_link(config)
      end
    else
      {:error, {:invalid_option, {:not_a_keyword_list, opts}}}
    end
  end

  defp keyword?(opts), do: Options.keyword?(opts)

  @doc false
  def start_system do
    children = [
      {Registry, keys: :unique, name: @registry},
      {Registry, keys: :duplicate, name: @members},
      Listener,
      {DynamicSupervisor, name: @pools, strategy: :one_for_one}
    ]

    Supervisor.start_link(children, strategy: :one_for_all, name: __MODULE__.Supervisor)
  end

  @doc """
  Starts a pool under the bridge's own supervisor. `pool` is an atom or a string of
  1..255 bytes. Options:

  * `modules:` Python modules of `@tool` functions to import (default `[]`);
  * `python_path:` directories to put on `PYTHONPATH` (the SDK's own is always there);
  * `env:` more environment variables, a map or list of `{name, value}` strings;
  * `python:` the interpreter (see the module doc);
  * `size:` local workers (1..256, default 2; 0 is allowed with `accept_remote:`);
    `concurrency:` calls at once per local worker (1..256, default 8; a remote worker says
    its own);
  * `accept_remote: [token: token]` also takes remote workers that present `token` (a
    string of at least 16 bytes; see "Remote workers");
  * `health_interval_ms:` (default 5_000); `max_response_bytes:` (at most 64 MiB, default
    16 MiB).
  """
  @spec start_pool(pool(), keyword()) :: {:ok, pid()} | {:error, term()}
  def start_pool(pool, opts \\ [])

  def start_pool(pool, opts) do
    with {:ok, config} <- config(pool, opts) do
      case DynamicSupervisor.start_child(@pools, Pool.child_spec(config)) do
        {:ok, pid} -> {:ok, pid}
        {:error, {:already_started, _}} -> {:error, {:already_started, pool}}
        {:error, {{:already_started, _}, _}} -> {:error, {:already_started, pool}}
        error -> error
      end
    end
  end

  defp config(pool, _opts) when not is_id(pool) or pool in [nil, true, false],
    do: {:error, {:invalid_pool_name, pool}}

  defp config(pool, opts) do
    spec = %{
      size: &Options.int_in?(&1, 0, @max_size),
      concurrency: &Options.int_in?(&1, 1, @max_concurrency),
      modules: &strings?/1,
      python_path: &strings?/1,
      env: &env?/1,
      python: &is_binary/1,
      health_interval_ms: &Options.pos_ms?/1,
      max_response_bytes: &Options.int_in?(&1, 1, @max_request_bytes),
      accept_remote: fn _ -> true end
    }

    with {:ok, o} <- Options.take(opts, spec),
         {:ok, digest} <- remote_token(Map.get(o, :accept_remote)),
         :ok <- some_workers(Map.get(o, :size, 2), digest),
         {:ok, python} <- find_python(Map.get(o, :python, default_python())),
         :ok <- listen_if(digest) do
      {:ok,
       %{
         pool: pool,
         token_digest: digest,
         python: python,
         size: Map.get(o, :size, 2),
         concurrency: Map.get(o, :concurrency, 8),
         modules: Map.get(o, :modules, []),
         python_path: Map.get(o, :python_path, []),
         env: Enum.to_list(Map.get(o, :env, [])),
         health_interval_ms: Map.get(o, :health_interval_ms, 5_000),
         max_response_bytes: Map.get(o, :max_response_bytes, 16 * 1024 * 1024)
       }}
    end
  end

  defp remote_token(nil), do: {:ok, nil}

  defp remote_token(opts) do
    with true <- keyword?(opts) and Keyword.keys(opts) == [:token],
         token when is_binary(token) and byte_size(token) >= @min_token_bytes <- opts[:token] do
      {:ok, :crypto.hash(:sha256, token)}
    else
      _ ->
        {:error,
         {:invalid_option, {:accept_remote, "a token of at least 16 bytes: [token: token]"}}}
    end
  end

  defp some_workers(0, nil), do: {:error, {:invalid_option, {:size, 0}}}
  defp some_workers(_size, _digest), do: :ok

  defp listen_if(nil), do: :ok

  defp listen_if(_digest) do
    with {:ok, _address} <- Listener.ensure_listening(), do: :ok
  end

  @doc """
  Where this node accepts remote workers: `{host, port}`, or `nil` before the first pool
  with `accept_remote:` has started the server.
  """
  @spec listen_address() :: {String.t(), :inet.port_number()} | nil
  def listen_address, do: Listener.address()

  defp strings?(list),
    do: Options.proper_list?(list) and Enum.all?(list, &(is_binary(&1) and String.valid?(&1)))

  defp env?(env) when is_map(env), do: env?(Map.to_list(env))

  defp env?(env) do
    Options.proper_list?(env) and
      Enum.all?(env, &match?({k, v} when is_binary(k) and is_binary(v), &1))
  end

  @doc "Stops a pool and its Python processes."
  @spec stop_pool(pool()) :: :ok | {:error, term()}
  def stop_pool(pool) do
    case Registry.lookup(@registry, {:pool, pool}) do
      [{sup, _}] ->
        case DynamicSupervisor.terminate_child(@pools, sup) do
          :ok -> :ok
          {:error, :not_found} -> Supervisor.stop(sup)
        end

      [] ->
        {:error, {:unknown_pool, pool}}
    end
  catch
    :exit, _ -> :ok
  end

  @doc """
  Calls `tool` with `args` (a map) on a worker of `pool`, round robin, as no session (a
  tool's `ctx` calls are refused). `timeout` in ms (default 5_000). Use
  `DSPex.Bridge.Python.call/4` to call for a session.

  The request is checked and encoded in the calling process: `{:error, {:not_serializable,
  detail}}` for a term that cannot cross (a pid, an improper list, nesting deeper than 48),
  `{:error, {:request_too_large, bytes, max}}` past 64 MiB, `{:error, {:invalid_option,
  {:timeout, t}}}`. None of these reach a worker, so other callers are never affected.
  """
  @spec call(pool(), String.t() | atom(), map(), pos_integer()) :: {:ok, term()} | {:error, term()}
  def call(pool, tool, args, timeout \\ 5_000), do: call_for(pool, nil, tool, args, timeout)

  @doc false
  # The call on behalf of `session` (nil: none); a session's calls go to the same worker
  # while it lives (affinity).
  def call_for(pool, session, tool, args, timeout) do
    # The members carry what a call needs (the pool's counter too): one registry lookup
    # on the way; the pool's own entry is read only when it has no member.
    with :ok <- check_call(tool, args, timeout),
         {:ok, members} <- members_of(pool),
         {:ok, id, frame} <- encode_call(tool, args, session, timeout) do
      Worker.call(pick(members, session), id, session, frame, timeout)
    end
  end

  defp members_of(pool) do
    case Registry.lookup(@members, pool) do
      [] ->
        with {:ok, _counter} <- pool_of(pool), do: {:error, :worker_unavailable}

      members ->
        {:ok, members}
    end
  end

  # Without a session: round robin. With one: rendezvous hashing over the members' slots,
  # so a session stays on its worker while it lives; when it goes, only its sessions move
  # (and a joining worker takes its share).
  defp pick([{_pid, %{counter: counter}} | _] = members, nil) do
    n = :atomics.add_get(counter, 1, 1)
    {pid, member} = Enum.at(members, rem(n, length(members)))
    Map.put(member, :pid, pid)
  end

  defp pick(members, session) do
    {pid, member} = Enum.max_by(members, fn {_pid, m} -> :erlang.phash2({session, m.slot}) end)
    Map.put(member, :pid, pid)
  end

  defp check_call(tool, args, timeout) do
    cond do
      not ((is_binary(tool) and String.valid?(tool)) or is_atom(tool)) ->
        {:error, {:invalid_tool, tool}}

      not is_map(args) ->
        {:error, {:invalid_args, args}}

      not Options.pos_ms?(timeout) ->
        {:error, {:invalid_option, {:timeout, timeout}}}

      true ->
        :ok
    end
  end

  defp pool_of(pool) do
    case Registry.lookup(@registry, {:pool, pool}) do
      [{_sup, %{counter: counter}}] -> {:ok, counter}
      [] -> {:error, {:unknown_pool, pool}}
    end
  end

  @doc false
  # The pool a remote hello names (by its text: no atom is made), if it accepts remote
  # workers: {:ok, pool, token_digest, supervisor} or :error.
  def remote_gate(text) when is_binary(text) do
    Enum.find_value(Options.spellings(text), :error, fn pool ->
      case Registry.lookup(@registry, {:pool, pool}) do
        [{sup, %{token: digest} = value}] when digest != nil -> {:ok, pool, digest, {sup, value}}
        _ -> nil
      end
    end)
  end

  @doc false
  def start_remote({sup, value}, pool, conn, peer, hello) do
    config = %{
      pool: pool,
      transport: {:remote, conn, peer},
      tools: hello.tools,
      concurrency: min(max(hello.concurrency, 1), @max_concurrency),
      health_interval_ms: value.health_interval_ms,
      max_response_bytes: value.max_response_bytes,
      counter: value.counter
    }

    Pool.start_remote(sup, config)
  end

  defp encode_call(tool, args, session, timeout) do
    id = :erlang.unique_integer([:positive, :monotonic])
    frame = {:call, id, tool, args, session_text(session), timeout}

    encoded =
      if :erlang.external_size(args) > @dirty_bytes,
        do: DSPex.Bridge.Native.bridge_encode_dirty(frame),
        else: DSPex.Bridge.Native.bridge_encode(frame)

    case encoded do
      {:ok, bytes} when byte_size(bytes) > @max_request_bytes ->
        {:error, {:request_too_large, byte_size(bytes), @max_request_bytes}}

      {:ok, bytes} ->
        {:ok, id, bytes}

      error ->
        error
    end
  end

  defp session_text(nil), do: ""
  defp session_text(s) when is_atom(s), do: Atom.to_string(s)
  defp session_text(s), do: s

  @doc """
  The workers serving a pool now: `[%{slot, os_pid, remote, peer, in_flight, tools}]`, local
  ones first by slot (`os_pid` is nil and `peer` the address for a remote one).
  """
  @spec workers(pool()) :: [map()]
  def workers(pool) do
    for {pid, %{slot: slot}} <- Enum.sort_by(Registry.lookup(@members, pool), &elem(&1, 1).slot),
        info = Worker.info(pid),
        info != nil,
        do: Map.put(info, :slot, slot)
  end

  @doc "The OS pids of a pool's Python processes (for operations and tests)."
  @spec os_pids(pool()) :: [non_neg_integer()]
  def os_pids(pool), do: for(%{os_pid: os} <- workers(pool), os != nil, do: os)

  @doc false
  def registry, do: @registry

  @doc false
  def members, do: @members

  @doc false
  def max_frame_bytes, do: @max_request_bytes

  @doc false
  def dirty_bytes, do: @dirty_bytes

  defp default_python do
    Application.get_env(:dspex_bridge, :python) || System.get_env("DSPEX_PYTHON") || "python3"
  end

  # Resolve the interpreter once, so version-manager shims are not in the way of every
  # restart (or of an OS kill). A virtual environment's interpreter stays itself.
  defp find_python(python) do
    # A path (not a bare name) is taken relative to the current directory, as a shell does.
    python = if String.contains?(python, "/"), do: Path.expand(python), else: python

    with path when is_binary(path) <- System.find_executable(python),
         {real, 0} <- System.cmd(path, ["-c", "import sys; sys.stdout.write(sys.executable)"]),
         true <- File.regular?(real) do
      # The SDK's one dependency for local workers: without it every worker would die at
      # start, again and again.
      case System.cmd(real, ["-c", "import google.protobuf"], stderr_to_stdout: true) do
        {_, 0} -> {:ok, real}
        _ -> {:error, {:python_lacks_protobuf, real, "run mix dspex.python.setup"}}
      end
    else
      _ -> {:error, {:python_not_found, python}}
    end
  end
end
