defmodule DSPex.Bridge.Python.Watch do
  @moduledoc false
  # `ctx.watch(names)` of a Python tool: a process, linked to the worker, that watches the
  # names in the call's session (as that session: `:observe` is checked) and carries every
  # change to Python as a Change frame. It lives until the call ends or Python closes the
  # watch; a variable deleted, or a watch the session store lost, reaches Python as a
  # change with `lost` set, never as silence.

  alias DSPex.Bridge.{Native, SessionStore}
  alias DSPex.Bridge.Python.SessionOps

  @doc false
  # Starts the watch; `reply` answers the request ({:ok, watch_id} or the error) and `send`
  # carries a frame to Python. Returns the watcher's pid.
  def start_link(session, watch_id, names, reply, send) do
    spawn_link(fn -> init(session, watch_id, names, reply, send) end)
  end

  defp init(session, watch_id, names, reply, send) do
    case watch_all(session, names) do
      {:ok, watched} ->
        reply.({:ok, watch_id})
        loop(session, watch_id, watched, send)

      {:error, _} = error ->
        reply.(SessionOps.error_outcome(error))
    end
  end

  defp watch_all(session, names) when is_list(names) and names != [] do
    Enum.reduce_while(names, {:ok, []}, fn text, {:ok, acc} ->
      with {:ok, name} <- SessionOps.resolve_variable(session, text),
           {:ok, _var} <- SessionStore.watch(session, name, caller: session) do
        {:cont, {:ok, [name | acc]}}
      else
        {:error, _} = error -> {:halt, error}
      end
    end)
  end

  defp watch_all(_session, names), do: {:error, {:invalid_names, names}}

  defp loop(session, watch_id, watched, send) do
    receive do
      {:dspex_variable_changed, ^session, name, %{old: old, new: new, version: version}} ->
        change(send, watch_id, name, old, new, version, false)
        loop(session, watch_id, watched, send)

      {:dspex_variable_deleted, ^session, name} ->
        change(send, watch_id, name, nil, nil, 0, true)
        loop(session, watch_id, List.delete(watched, name), send)

      {:dspex_watch_lost, ^session, name, _reason} ->
        change(send, watch_id, name, nil, nil, 0, true)
        loop(session, watch_id, List.delete(watched, name), send)

      :stop ->
        for name <- watched, do: SessionStore.unwatch(session, name)
        :ok
    end
  end

  defp change(send, watch_id, name, old, new, version, lost?) do
    frame = {:change, watch_id, SessionOps.name_text(name), old, new, version, lost?}

    case Native.bridge_encode(frame) do
      {:ok, bytes} -> send.(bytes)
      # A value that cannot cross (a pid in a :module variable, say): say so, not nothing.
      {:error, _} -> send_lost(send, watch_id, name)
    end
  end

  defp send_lost(send, watch_id, name) do
    {:ok, bytes} =
      Native.bridge_encode({:change, watch_id, SessionOps.name_text(name), nil, nil, 0, true})

    send.(bytes)
  end
end
