defmodule DSPex.Bridge.HAManager.Router do
  @moduledoc false
  # Sends a SessionStore call for a session this node does not hold to the owner the
  # directory names. A call travels at most three hops, so directories that disagree for a
  # moment (during a migration) cannot bounce it forever.

  alias DSPex.Bridge.HAManager.Directory
  alias DSPex.Bridge.SessionStore

  @max_hops 3

  def forward(session_id, fun, args, error) do
    hops = Process.get(:dspex_ha_hops, 0)

    with false <- :ets.member(SessionStore.Tables.sessions(), session_id),
         {owner, _epoch, _replicas} when owner != node() <- Directory.lookup(session_id),
         true <- hops < @max_hops do
      try do
        :erpc.call(owner, __MODULE__, :apply_routed, [fun, with_caller_pid(fun, args), hops + 1])
      catch
        :error, {:erpc, _} -> {:error, {:owner_unreachable, owner}}
      end
    else
      _ -> error
    end
  end

  @doc false
  def apply_routed(fun, args, hops) do
    Process.put(:dspex_ha_hops, hops)
    apply(SessionStore, fun, args)
  end

  # watch/unwatch default to the calling process, which must stay this caller.
  defp with_caller_pid(fun, [id, name, opts]) when fun in [:watch, :unwatch] and is_list(opts),
    do: [id, name, Keyword.put_new(opts, :pid, self())]

  defp with_caller_pid(_fun, args), do: args
end
