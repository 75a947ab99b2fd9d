defmodule DSPex.Bridge.HAManager.Router do
  @moduledoc false
  # Sends a call for a session this node does not hold to the owner the directory names
  # (SessionStore's, DependencyManager's, ...: `module` says whose). A call travels at most
  # three hops, so directories that disagree for a moment (during a migration) cannot
  # bounce it forever.

  alias DSPex.Bridge.HAManager.Directory
  alias DSPex.Bridge.SessionStore

  @max_hops 3

  @doc false
  # `result` is this node's answer; when it says the session is not here (or, for a
  # session another node owns, that the caller is unknown here), the owner answers instead.
  def routed({:error, reason} = error, module, session_id, fun, args)
      when reason in [:session_not_found, :access_denied],
      do: forward(module, session_id, fun, args, error)

  def routed(result, _module, _session_id, _fun, _args), do: result

  # A call whose hops are spent answers as this node would (its `error`).
  def forward(module, session_id, fun, args, error) do
    case remote_owner(session_id) do
      nil ->
        # Not on this node nor on an owner node: the Redis backend may hold it.
        DSPex.Bridge.SessionStore.Backends.route(module, fun, args, error)

      owner ->
        if Process.get(:dspex_ha_hops, 0) < @max_hops,
          do: call_owner(owner, module, fun, with_caller_pid(fun, args), :infinity),
          else: error
    end
  end

  @doc false
  # The node that owns `session_id` when it is not this one (nil when it is here, or is
  # known nowhere).
  def remote_owner(session_id) do
    with false <- :ets.member(SessionStore.Tables.sessions(), session_id),
         {owner, _epoch, _replicas} when owner != node() <- Directory.lookup(session_id) do
      owner
    else
      _ -> nil
    end
  end

  @doc false
  # `module.fun(args)` on `owner`, within the hop limit.
  def call_owner(owner, module, fun, args, timeout \\ 30_000) do
    hops = Process.get(:dspex_ha_hops, 0)

    if hops < @max_hops do
      try do
        :erpc.call(owner, __MODULE__, :apply_routed, [module, fun, args, hops + 1], timeout)
      catch
        :error, {:erpc, _} -> {:error, {:owner_unreachable, owner}}
      end
    else
      {:error, {:owner_unreachable, owner}}
    end
  end

  @doc false
  def apply_routed(module, fun, args, hops) do
    Process.put(:dspex_ha_hops, hops)
    apply(module, fun, args)
  end

  # watch/unwatch default to the calling process, which must stay this caller.
  defp with_caller_pid(fun, [id, name, opts]) when fun in [:watch, :unwatch] and is_list(opts),
    do: [id, name, Keyword.put_new(opts, :pid, self())]

  defp with_caller_pid(_fun, args), do: args
end
