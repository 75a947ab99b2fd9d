defmodule DSPex.Bridge.SessionStore.RedisBackend.Watchers do
  @moduledoc false
  # Who on this node watches which variable of a Redis session, and the delivery of the
  # changes the server publishes (see Scripts). Pure functions over the backend process's
  # state; the process subscribes a session's channel while anyone here watches it.
  #
  # A watcher added at version v gets the changes after v only: a change published between
  # the subscription and the read that returned v is not sent twice.

  alias DSPex.Bridge.SessionStore.RedisBackend

  defstruct watchers: %{}, monitors: %{}

  @type t :: %__MODULE__{
          # {session, name} => %{pid => the version it has seen}
          watchers: %{{term(), term()} => %{pid() => pos_integer()}},
          # pid => {monitor, [{session, name}]}
          monitors: %{pid() => {reference(), [{term(), term()}]}}
        }

  def new, do: %__MODULE__{}

  def watched?(%__MODULE__{watchers: w}, session),
    do: Enum.any?(Map.keys(w), &match?({^session, _}, &1))

  def add(%__MODULE__{} = state, session, name, pid, version) do
    key = {session, name}
    watchers = Map.update(state.watchers, key, %{pid => version}, &Map.put(&1, pid, version))

    monitors =
      case state.monitors do
        %{^pid => {ref, keys}} -> Map.put(state.monitors, pid, {ref, Enum.uniq([key | keys])})
        _ -> Map.put(state.monitors, pid, {Process.monitor(pid), [key]})
      end

    %{state | watchers: watchers, monitors: monitors}
  end

  def remove(%__MODULE__{} = state, session, name, pid) do
    key = {session, name}
    state = %{state | watchers: drop_pid(state.watchers, key, pid)}

    case state.monitors do
      %{^pid => {ref, keys}} ->
        case List.delete(keys, key) do
          [] ->
            Process.demonitor(ref, [:flush])
            %{state | monitors: Map.delete(state.monitors, pid)}

          rest ->
            %{state | monitors: Map.put(state.monitors, pid, {ref, rest})}
        end

      _ ->
        state
    end
  end

  def down(%__MODULE__{} = state, pid) do
    case Map.pop(state.monitors, pid) do
      {nil, _} ->
        state

      {{_ref, keys}, monitors} ->
        watchers = Enum.reduce(keys, state.watchers, &drop_pid(&2, &1, pid))
        %{state | watchers: watchers, monitors: monitors}
    end
  end

  defp drop_pid(watchers, key, pid) do
    case watchers do
      %{^key => pids} when map_size(pids) == 1 and is_map_key(pids, pid) ->
        Map.delete(watchers, key)

      %{^key => pids} ->
        Map.put(watchers, key, Map.delete(pids, pid))

      _ ->
        watchers
    end
  end

  @doc false
  # A published message of `session`: sends what it means to this node's watchers.
  def deliver(%__MODULE__{} = state, session, payload) do
    case netstrings(payload) do
      ["w", _writer, _tag | items] -> changed(state, session, items)
      ["d", _writer, _tag, f] -> lose(state, session, [RedisBackend.decode_id(f)], :deleted)
      ["x", _writer, _tag] -> lose(state, session, names(state, session), :session_deleted)
      _ -> state
    end
  end

  @doc false
  # Every watch of every session ends with `reason` (the subscription is gone).
  def lose_all(%__MODULE__{} = state, reason) do
    for {{session, name}, pids} <- state.watchers,
        pid <- Map.keys(pids),
        do: send(pid, {:dspex_watch_lost, session, name, reason})

    for {_pid, {ref, _}} <- state.monitors, do: Process.demonitor(ref, [:flush])
    new()
  end

  defp changed(state, session, [f, version, old, new | rest]) do
    name = RedisBackend.decode_id(f)
    version = String.to_integer(version)

    state =
      case state.watchers do
        %{{^session, ^name} => pids} ->
          message = {:dspex_variable_changed, session, name, change(old, new, version)}

          pids =
            Map.new(pids, fn {pid, seen} ->
              if version > seen, do: send(pid, message)
              {pid, max(seen, version)}
            end)

          %{state | watchers: Map.put(state.watchers, {session, name}, pids)}

        _ ->
          state
      end

    changed(state, session, rest)
  end

  defp changed(state, _session, _), do: state

  defp change(old, new, version) do
    # Trusted like the rest of the server's data (see RedisBackend's unblob).
    {old_value, _} = :erlang.binary_to_term(old)
    {new_value, _} = :erlang.binary_to_term(new)
    %{old: old_value, new: new_value, version: version}
  end

  defp names(state, session), do: for({^session, name} <- Map.keys(state.watchers), do: name)

  defp lose(state, session, names, reason) do
    Enum.reduce(names, state, fn name, state ->
      pids = Map.get(state.watchers, {session, name}, %{})

      for pid <- Map.keys(pids) do
        if reason == :deleted,
          do: send(pid, {:dspex_variable_deleted, session, name}),
          else: send(pid, {:dspex_watch_lost, session, name, reason})
      end

      Enum.reduce(Map.keys(pids), state, &remove(&2, session, name, &1))
    end)
  end

  @doc false
  # `<length>:<bytes>` items, as the scripts write them: all, or the first `count`.
  def netstrings(binary, count \\ -1)
  def netstrings("", _count), do: []
  def netstrings(_binary, 0), do: []

  def netstrings(binary, count) do
    with [length, rest] <- :binary.split(binary, ":"),
         {n, ""} <- Integer.parse(length),
         <<item::binary-size(n), rest::binary>> <- rest do
      [item | netstrings(rest, count - 1)]
    else
      _ -> [:malformed]
    end
  end
end
