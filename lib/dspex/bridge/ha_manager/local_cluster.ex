defmodule DSPex.Bridge.HAManager.LocalCluster do
  @moduledoc """
  Peer nodes on this host running `:dspex_bridge`, for demos, tests and benchmarks of
  `DSPex.Bridge.HAManager` (OTP `:peer` on 127.0.0.1).

      :ok = LocalCluster.ensure_distributed(:demo)
      {:ok, [a, b]} = LocalCluster.start_peers(["a", "b"], replication: :sync)
      # ... use :erpc.call(a, DSPex.Bridge.SessionStore, ...) ...
      LocalCluster.stop_peers([a, b])

  Peers get this node's code path, connect to this node and to each other explicitly, and
  reconnect on their own after a cut (`dist_auto_connect once`), so a test can cut a link between
  two peers and it stays cut until it is restored with `connect/2`.
  """

  alias DSPex.Bridge.HAManager

  @doc """
  Makes this node distributed as `<name>@127.0.0.1` if it is not already (starting `epmd`
  when needed), and restarts its HAManager under the new node name with `ha_opts`
  (default `weight: 0.0`: this node only drives the others and never owns a session).
  """
  @spec ensure_distributed(atom(), keyword()) :: :ok | {:error, term()}
  def ensure_distributed(name, ha_opts \\ [weight: 0.0]) do
    with :ok <- start_net_kernel(name) do
      Application.put_env(:dspex_bridge, :ha, ha_opts)
      :ok = Supervisor.terminate_child(DSPex.Bridge.Supervisor, HAManager)
      {:ok, _} = Supervisor.restart_child(DSPex.Bridge.Supervisor, HAManager)
      :ok
    end
  end

  defp start_net_kernel(name) do
    if Node.alive?() do
      :ok
    else
      {_, 0} = System.cmd("epmd", ["-daemon"])
      # Partitions between peers are tested: this node must not try to heal them.
      :application.set_env(:kernel, :prevent_overlapping_partitions, false)

      case :net_kernel.start([:"#{name}@127.0.0.1", :longnames]) do
        {:ok, _} -> :ok
        {:error, reason} -> {:error, {:not_distributed, reason}}
      end
    end
  end

  @doc """
  Starts one peer per name with `:dspex_bridge` running and HA options `ha_opts` (weight
  1.0, one replica, `:sync` replication unless given), all connected to each other.
  """
  @spec start_peers([String.t()], keyword()) :: {:ok, [node()]}
  def start_peers(names, ha_opts \\ []) do
    paths = Enum.flat_map(:code.get_path(), &[~c"-pa", &1])

    # Several nodes share this host's cores: schedulers that spin while idle would take CPU
    # from the node that has work, so they sleep at once instead.
    no_spin = Enum.flat_map(~w(+sbwt +sbwtdcpu +sbwtdio), &[String.to_charlist(&1), ~c"none"])
    # A migration sends the whole session as one message: with the default 1 MB
    # distribution buffer limit the sender would be suspended while it drains.
    dist_buffer = [~c"+zdbbl", ~c"65536"]

    args =
      paths ++
        no_spin ++
        dist_buffer ++
        [~c"-kernel", ~c"dist_auto_connect", ~c"once"] ++
        [~c"-kernel", ~c"prevent_overlapping_partitions", ~c"false"]

    nodes =
      for name <- names do
        unique = "#{name}_#{System.unique_integer([:positive])}"

        {:ok, _pid, node} =
          :peer.start(%{
            name: String.to_atom(unique),
            host: ~c"127.0.0.1",
            longnames: true,
            args: args,
            wait_boot: 30_000
          })

        :ok = :erpc.call(node, Application, :put_env, [:dspex_bridge, :ha, ha_opts])
        {:ok, _} = :erpc.call(node, Application, :ensure_all_started, [:dspex_bridge])
        node
      end

    for a <- nodes, b <- nodes, a < b, do: true = connect(a, b)
    {:ok, nodes}
  end

  @doc "Connects two peers (again). `{:error, reason}` when `a` cannot be reached."
  @spec connect(node(), node()) :: boolean() | {:error, term()}
  def connect(a, b) when is_atom(a) and is_atom(b), do: on(a, Node, :connect, [b])
  def connect(a, b), do: {:error, {:invalid_nodes, {a, b}}}

  @doc "Cuts the link between two peers; it stays cut until `connect/2`."
  @spec disconnect(node(), node()) :: boolean() | {:error, term()}
  def disconnect(a, b) when is_atom(a) and is_atom(b),
    do: on(a, :erlang, :disconnect_node, [b])

  def disconnect(a, b), do: {:error, {:invalid_nodes, {a, b}}}

  defp on(node, m, f, args, timeout \\ 15_000) do
    :erpc.call(node, m, f, args, timeout)
  rescue
    e in ErlangError -> {:error, e.original}
  end

  @doc "Stops peers (gracefully) and waits until they are gone; `kill/1` halts one abruptly."
  @spec stop_peers([node()]) :: :ok | {:error, term()}
  def stop_peers(nodes) when is_list(nodes) do
    if DSPex.Bridge.Options.proper_list?(nodes) and Enum.all?(nodes, &is_atom/1),
      do: stop_all(nodes),
      else: {:error, {:invalid_nodes, nodes}}
  end

  def stop_peers(nodes), do: {:error, {:invalid_nodes, nodes}}

  defp stop_all(nodes) do
    live = Enum.filter(nodes, &(&1 in Node.list()))
    for n <- live, do: Node.monitor(n, true)
    for n <- live, do: :erpc.cast(n, :init, :stop, [])

    for n <- live do
      receive do
        {:nodedown, ^n} -> :ok
      after
        15_000 -> :ok
      end
    end

    :ok
  end

  @doc """
  Writes `first..last` in turn to `variable` of `session_id` from a process on `node`, so
  each write costs what it costs there (no network round trip per write). Returns the last
  value whose write was acknowledged.
  """
  @spec write_sequence(node(), term(), term(), Range.t()) :: {:ok, integer()} | {:error, term()}
  def write_sequence(node, session_id, variable, first..last//1) when is_atom(node),
    do: on(node, __MODULE__, :write_here, [session_id, variable, first, last], :infinity)

  def write_sequence(node, _session_id, _variable, range),
    do: {:error, {:invalid_arguments, {node, range}}}

  @doc false
  def write_here(session_id, variable, first, last) do
    Enum.reduce_while(first..last, {:ok, first - 1}, fn i, acc ->
      case DSPex.Bridge.SessionStore.update_variable(session_id, variable, i) do
        {:ok, _} -> {:cont, {:ok, i}}
        error -> {:halt, {error, acc}}
      end
    end)
  end

  @doc "Halts a peer at once, as a crash would: no cleanup runs."
  @spec kill(node()) :: :ok
  def kill(node) do
    :erpc.cast(node, :erlang, :halt, [137])
    :ok
  end
end
