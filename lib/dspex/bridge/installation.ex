defmodule DSPex.Bridge.Installation do
  @moduledoc false
  # The process behind the child specs of things that live without a process of their own
  # (a breaker or a limiter in ETS, a /metrics listener under :inets): it installs the thing
  # when it starts and removes it when it stops, so the thing lives exactly as long as the
  # supervision tree that holds it.
  #
  # `install` is an MFA returning {:ok, handle} or {:error, reason}; `uninstall` an
  # {module, function} called with the handle. A linked process that exits (the listener)
  # takes this one with it, and the supervisor starts both again.
  use GenServer

  alias DSPex.Bridge.Options

  @doc false
  # The child spec of a thing named by `name:` in `opts`, installed with
  # `module.install(name, rest)` and removed with `module.remove_fun(name)`. Bad options make
  # a child that refuses to start with the reason (never a raise here).
  def named_child_spec(module, opts, remove_fun) do
    {name, opts} = if Options.keyword?(opts), do: Keyword.pop(opts, :name), else: {nil, opts}

    child_spec(%{
      id: {module, name},
      install: {module, :install, [name, opts]},
      uninstall: {module, remove_fun}
    })
  end

  @doc false
  # An idempotent install into `table`: a `{{:settings, name}, settings}` row claims the
  # name, then `create` stores the thing. The same settings again are :ok; others are refused.
  def claim(table, name, settings, create) do
    if :ets.insert_new(table, {{:settings, name}, settings}) do
      create.()
      :ok
    else
      case :ets.lookup(table, {:settings, name}) do
        [{_, ^settings}] -> :ok
        _ -> {:error, {:already_started_with_other_options, name}}
      end
    end
  end

  @spec child_spec(map()) :: Supervisor.child_spec()
  def child_spec(%{id: id, install: install, uninstall: uninstall}) do
    %{id: id, start: {__MODULE__, :start_link, [install, uninstall]}}
  end

  def start_link(install, uninstall), do: GenServer.start_link(__MODULE__, {install, uninstall})

  @impl true
  def init({{m, f, a}, uninstall}) do
    Process.flag(:trap_exit, true)

    case apply(m, f, a) do
      {:ok, handle} -> {:ok, {uninstall, handle}}
      {:error, reason} -> {:stop, reason}
    end
  end

  @impl true
  def handle_info({:EXIT, _pid, reason}, state), do: {:stop, reason, state}
  def handle_info(_other, state), do: {:noreply, state}

  @impl true
  def terminate(_reason, {{m, f}, handle}) do
    apply(m, f, [handle])
    :ok
  end
end
