defmodule DSPex.Bridge.OptimizerCoordinator.RemoteHolder do
  @moduledoc false
  # A lock of a session this node owns, taken by a process on another node: the lock table
  # can only monitor local processes, so it holds the lock for a local stand-in. The
  # stand-in monitors the remote holder (its death, or its node's), forwards what the table
  # sends the holder (`{:lock_lost, ...}`, `{:optimization_preempted, ...}`), and exits when
  # the holder goes: the table's monitor then releases every lock it held.
  #
  # One stand-in per remote process, found in a table keyed by its pid.

  @table :dspex_bridge_remote_holders

  def table, do: {DSPex.Bridge.TableOwner, {@table, [:set]}}

  @spec for(pid()) :: pid()
  def for(remote) when is_pid(remote) and node(remote) != node() do
    case :ets.lookup(@table, remote) do
      [{_, proxy}] ->
        if Process.alive?(proxy) do
          proxy
        else
          :ets.delete_object(@table, {remote, proxy})
          __MODULE__.for(remote)
        end

      [] ->
        start(remote)
    end
  end

  @doc false
  # The remote process `proxy` stands for, or nil when `proxy` is not a stand-in.
  @spec remote_of(pid()) :: pid() | nil
  def remote_of(proxy) when is_pid(proxy) do
    case :ets.match(@table, {:"$1", proxy}) do
      [[remote] | _] -> remote
      [] -> nil
    end
  end

  defp start(remote) do
    parent = self()
    tag = make_ref()

    spawn(fn ->
      if :ets.insert_new(@table, {remote, self()}) do
        monitor = Process.monitor(remote)
        send(parent, {tag, self()})
        relay(remote, monitor)
      else
        send(parent, {tag, :taken})
      end
    end)

    receive do
      {^tag, proxy} when is_pid(proxy) -> proxy
      {^tag, :taken} -> __MODULE__.for(remote)
    end
  end

  defp relay(remote, monitor) do
    receive do
      {:DOWN, ^monitor, :process, _, _} ->
        :ets.delete_object(@table, {remote, self()})

      msg ->
        send(remote, msg)
        relay(remote, monitor)
    end
  end
end
