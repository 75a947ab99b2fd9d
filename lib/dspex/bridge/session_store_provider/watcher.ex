defmodule DSPex.Bridge.SessionStoreProvider.Watcher do
  @moduledoc false
  # The process behind SessionStoreProvider.watch_variables/4: it watches the variables
  # through SessionStore and calls the watcher function for each change, so that a slow or
  # failing function never holds up the session's writers. It ends with the process it
  # watches for (watcher_pid:), or when stopped.

  require Logger
  alias DSPex.Bridge.SessionStore

  @spec start(SessionStore.session_id(), [{term(), term()}], function(), keyword()) ::
          {:ok, pid()} | {:error, term()}
  def start(session_id, names, fun, opts) do
    owner = Keyword.get(opts, :watcher_pid, self())
    filter = Keyword.get(opts, :filter)
    initial = Keyword.get(opts, :include_initial, false) == true

    cond do
      not is_pid(owner) ->
        {:error, {:invalid_option, {:watcher_pid, owner}}}

      not (is_nil(filter) or is_function(filter, 2)) ->
        {:error, {:invalid_option, {:filter, filter}}}

      true ->
        start_process(session_id, names, fun, %{owner: owner, filter: filter, initial: initial})
    end
  end

  defp start_process(session_id, names, fun, o) do
    parent = self()
    tag = make_ref()

    {pid, ref} =
      spawn_monitor(fn ->
        case watch_all(session_id, names) do
          {:ok, current} ->
            send(parent, {tag, :ok})
            owner = Process.monitor(o.owner)
            by_name = Map.new(names, fn {id, name} -> {name, id} end)

            if o.initial,
              do:
                for(
                  {name, value} <- current,
                  do: call(fun, by_name[name], nil, value, %{initial: true})
                )

            loop(%{session: session_id, fun: fun, filter: o.filter, ids: by_name, owner: owner})

          error ->
            send(parent, {tag, error})
        end
      end)

    receive do
      {^tag, :ok} ->
        Process.demonitor(ref, [:flush])
        {:ok, pid}

      {^tag, error} ->
        Process.demonitor(ref, [:flush])
        error

      {:DOWN, ^ref, :process, ^pid, reason} ->
        {:error, {:watcher_failed, reason}}
    end
  end

  defp watch_all(session_id, names) do
    Enum.reduce_while(names, {:ok, []}, fn {_id, name}, {:ok, acc} ->
      case SessionStore.watch(session_id, name) do
        {:ok, var} -> {:cont, {:ok, [{name, var.value} | acc]}}
        {:error, {:variable_not_found, _}} -> {:halt, {:error, :not_found}}
        {:error, :session_not_found} -> {:halt, {:error, :session_expired}}
        error -> {:halt, error}
      end
    end)
  end

  @spec stop(pid()) :: :ok
  def stop(pid) do
    ref = Process.monitor(pid)
    send(pid, :stop)

    receive do
      {:DOWN, ^ref, :process, ^pid, _} -> :ok
    after
      5_000 ->
        Process.exit(pid, :kill)
        :ok
    end
  end

  defp loop(s) do
    receive do
      {:dspex_variable_changed, sid, name, %{old: old, new: new, version: v}}
      when sid == s.session and is_map_key(s.ids, name) ->
        if s.filter == nil or s.filter.(old, new) == true,
          do: call(s.fun, s.ids[name], old, new, %{version: v})

        loop(s)

      {:dspex_variable_deleted, sid, name} when sid == s.session and is_map_key(s.ids, name) ->
        call(s.fun, s.ids[name], nil, nil, %{deleted: true})
        loop(%{s | ids: Map.delete(s.ids, name)})

      {:dspex_watch_lost, sid, name, reason} when sid == s.session and is_map_key(s.ids, name) ->
        call(s.fun, s.ids[name], nil, nil, %{lost: reason})
        loop(%{s | ids: Map.delete(s.ids, name)})

      {:DOWN, ref, :process, _, _} when ref == s.owner ->
        :ok

      :stop ->
        for {name, _} <- s.ids, do: SessionStore.unwatch(s.session, name)
        :ok

      _other ->
        loop(s)
    end
  end

  defp call(fun, id, old, new, metadata) do
    fun.(id, old, new, metadata)
  rescue
    e -> Logger.warning("watcher function failed for #{inspect(id)}: #{Exception.message(e)}")
  catch
    kind, reason ->
      Logger.warning("watcher function failed for #{inspect(id)}: #{inspect({kind, reason})}")
  end
end
