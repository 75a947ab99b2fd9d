defmodule DSPex.Bridge.SessionStore.Watchers do
  @moduledoc false
  # The watchers of one session, kept in its process's state (`watchers`: name => pid =>
  # monitor ref; `monitors`: ref => {name, pid}) and mirrored in the watchers table, so that
  # a restarted session process takes them over (`restore/1`). Every function takes and
  # returns the session's state; only the session's process calls them.

  alias DSPex.Bridge.SessionStore.Tables

  # Watches `name` for `pid` (a no-op when it already does).
  def add(state, name, pid) do
    if Map.has_key?(Map.get(state.watchers, name, %{}), pid) do
      state
    else
      ref = Process.monitor(pid)
      :ets.insert(Tables.watchers(), {state.id, name, pid})
      watchers = Map.update(state.watchers, name, %{pid => ref}, &Map.put(&1, pid, ref))
      %{state | watchers: watchers, monitors: Map.put(state.monitors, ref, {name, pid})}
    end
  end

  # Stops `pid` watching `name`.
  def remove(state, name, pid) do
    case state.watchers do
      %{^name => %{^pid => ref}} ->
        Process.demonitor(ref, [:flush])
        :ets.delete_object(Tables.watchers(), {state.id, name, pid})
        watchers = Map.update!(state.watchers, name, &Map.delete(&1, pid))
        %{state | watchers: prune(watchers, name), monitors: Map.delete(state.monitors, ref)}

      _ ->
        state
    end
  end

  # Drops every watcher of `name` (a deleted variable): `{state, pids}`.
  def drop(state, name) do
    {by_pid, watchers} = Map.pop(state.watchers, name, %{})
    for {_pid, ref} <- by_pid, do: Process.demonitor(ref, [:flush])
    :ets.match_delete(Tables.watchers(), {state.id, name, :_})
    monitors = Map.drop(state.monitors, Map.values(by_pid))
    {%{state | watchers: watchers, monitors: monitors}, Map.keys(by_pid)}
  end

  # The session ends for good: every watcher hears it.
  def lose_all(state, reason) do
    for {name, pid} <- list(state), do: send(pid, {:dspex_watch_lost, state.id, name, reason})
    :ok
  end

  # Every watch as `{name, pid}` (what a migration or a replica's snapshot carries).
  def list(state),
    do: for({name, by_pid} <- state.watchers, pid <- Map.keys(by_pid), do: {name, pid})

  # Tells the watchers of a changed variable.
  def notify(state, old, new) do
    for pid <- Map.keys(Map.get(state.watchers, new.name, %{})) do
      send(
        pid,
        {:dspex_variable_changed, state.id, new.name,
         %{old: old.value, new: new.value, version: new.version}}
      )
    end

    :ok
  end

  # A monitored watcher went down (a monitor that is not a watcher's: the state as it is).
  def down(state, ref, reason) do
    case Map.pop(state.monitors, ref) do
      {nil, _} ->
        state

      {{name, pid}, monitors} ->
        # A watcher on a node this one lost sight of may still be alive: it is told, so that
        # it can watch again once its node is back, rather than wait in silence.
        if reason == :noconnection,
          do: send(pid, {:dspex_watch_lost, state.id, name, :noconnection})

        :ets.delete_object(Tables.watchers(), {state.id, name, pid})
        watchers = Map.update(state.watchers, name, %{}, &Map.delete(&1, pid))
        %{state | monitors: monitors, watchers: prune(watchers, name)}
    end
  end

  # After a crash of the session's process: the watchers its rows kept that are alive.
  def restore(state) do
    Enum.reduce(:ets.lookup(Tables.watchers(), state.id), state, fn {_, name, pid} = row, st ->
      # The row goes back with the new monitor (add/3 inserts it again).
      :ets.delete_object(Tables.watchers(), row)
      if Process.alive?(pid), do: add(st, name, pid), else: st
    end)
  end

  defp prune(watchers, name) do
    if watchers[name] == %{}, do: Map.delete(watchers, name), else: watchers
  end
end
