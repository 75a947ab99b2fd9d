defmodule DSPex.Bridge.TableOwner do
  @moduledoc false
  # A process whose only job is to own a named public ETS table, so the table outlives
  # every caller that reads or writes it. Used as a child: {TableOwner, {name, options}}.

  def child_spec({table, options}) do
    %{id: {__MODULE__, table}, start: {__MODULE__, :start_link, [table, options]}}
  end

  def start_link(table, options) do
    parent = self()

    pid =
      spawn_link(fn ->
        :ets.new(table, [:named_table, :public | options])
        send(parent, {__MODULE__, table, :ready})
        Process.sleep(:infinity)
      end)

    # Return only once the table exists, so the next child can rely on it.
    receive do
      {__MODULE__, ^table, :ready} -> {:ok, pid}
    end
  end
end
