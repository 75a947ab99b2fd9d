defmodule DSPex.Bridge.HAManager.Directory do
  @moduledoc false
  # Which node owns which registered session, at which epoch, with which replicas: an ETS
  # table every node keeps, fed by announcements. A newer epoch always wins; learning one
  # also runs the local ownership machine, which says whether a copy here was demoted.

  alias DSPex.Bridge.{HAManager, Native}

  @table :dspex_ha_directory

  # Owned by a DSPex.Bridge.TableOwner, so it outlives a restart of the HAManager process.
  def tables, do: [{@table, [:set, read_concurrency: true]}]

  def lookup(id) do
    case :ets.lookup(@table, id) do
      [{_, owner, epoch, replicas}] -> {owner, epoch, replicas}
      [] -> nil
    end
  end

  @doc false
  # Tells every node (this one first) that `owner` holds `id` at `epoch`, and waits for
  # them (5 s at most), so a call made anywhere once this returns is routed to the owner.
  def announce(id, owner, epoch, replicas) do
    learn(id, owner, epoch, replicas)
    GenServer.multi_call(Node.list(), HAManager, {:owner, id, owner, epoch, replicas}, 5_000)
    :ok
  end

  def learn(id, owner, epoch, replicas) do
    newer =
      case lookup(id) do
        {_, known, _} -> epoch > known
        nil -> true
      end

    if newer do
      :ets.insert(@table, {id, owner, epoch, replicas})
      demote_if_stale(id, owner, epoch)
    end

    :ok
  end

  # A copy this node still writes at an older epoch (it was cut off while another node
  # took over) is dropped; its callers are routed to the new owner from now on.
  defp demote_if_stale(id, owner, epoch) do
    key = HAManager.key(id)

    case Native.ha_apply(HAManager.table(), key, {:observe, Atom.to_string(owner), epoch}) do
      {:ok, true} ->
        with {:ok, pid} <- HAManager.local_session(id), do: send(pid, :ha_demote)

      _ ->
        :ok
    end
  end

  def forget(id) do
    :ets.delete(@table, id)
    Native.ha_forget(HAManager.table(), HAManager.key(id))
    :ok
  end

  def owned_by(node), do: :ets.select(@table, [{{:"$1", node, :_, :_}, [], [:"$1"]}])

  def entries_owned_by(node), do: :ets.match_object(@table, {:_, node, :_, :_})
end
