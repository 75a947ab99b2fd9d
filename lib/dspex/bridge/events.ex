defmodule DSPex.Bridge.Events do
  @moduledoc """
  The ObserverManager: every feature's events, delivered as messages and to `:telemetry`.

  Events are named `[:dspex, :bridge, feature, event]` and carry a measurements map and a
  metadata map. A process subscribes to a *prefix* and receives every event that starts
  with it as a message:

      {:dspex_event, event, measurements, metadata}

  When the host application ships `:telemetry`, every event also goes to
  `:telemetry.execute/3`; this project has no hex dependencies, so nothing else is needed.

  ## Example

      iex> :ok = DSPex.Bridge.Events.subscribe([:dspex, :bridge, :session])
      iex> {:ok, _} = DSPex.Bridge.SessionStore.create_session("events_doc")
      iex> receive do
      ...>   {:dspex_event, [:dspex, :bridge, :session, :created], _m, %{session_id: id}} -> id
      ...> after
      ...>   1_000 -> :timeout
      ...> end
      "events_doc"
      iex> DSPex.Bridge.SessionStore.delete_session("events_doc")
      :ok

  Emitting is cheap when nobody listens: a single atomic read decides whether any
  subscriber or `:telemetry` is present, and callers use `enabled?/0` to skip measuring.
  Subscriptions of a process that exits are dropped.
  """
  use GenServer

  @registry DSPex.Bridge.Events.Registry
  # Atom keys for the persistent terms read on hot paths (here and in TelemetryAdapter,
  # Analytics, Recorder, AccessControl, OptimizerCoordinator): a get hashes its key, and a
  # `{module, name}` tuple costs about twice an atom.
  @counter :dspex_bridge_event_subscriptions
  # `true` while an event would reach anyone: hot paths check this one boolean before they
  # build an event. Replacing a boolean persistent term costs no global GC.
  @enabled :dspex_bridge_events_enabled

  @typedoc "An event name: a list of atoms such as `[:dspex, :bridge, :variable, :write]`."
  @type event :: [atom()]
  @typedoc "A subscription prefix; `[]` receives every event."
  @type prefix :: [atom()]

  @doc false
  @spec init() :: :ok
  def init do
    unless :persistent_term.get(@counter, nil) do
      :persistent_term.put(@counter, :atomics.new(1, signed: true))
    end

    DSPex.Bridge.TelemetryAdapter.init()
  end

  @doc false
  # Recomputes `enabled?/0` after the telemetry check changed. The server does it, so that
  # it never races with a subscription changing the count.
  @spec refresh() :: :ok
  def refresh do
    if GenServer.whereis(__MODULE__), do: GenServer.call(__MODULE__, :refresh), else: set_enabled()
  end

  defp set_enabled do
    enabled =
      :atomics.get(:persistent_term.get(@counter), 1) > 0 or
        DSPex.Bridge.TelemetryAdapter.available?()

    if :persistent_term.get(@enabled, nil) != enabled, do: :persistent_term.put(@enabled, enabled)
    # Hot NIFs read their own copy, so that they can tell the caller "nothing to report".
    DSPex.Bridge.Native.events_set_enabled(enabled)
  end

  @doc false
  def start_link(_opts), do: GenServer.start_link(__MODULE__, :ok, name: __MODULE__)

  @doc """
  Subscribes the calling process to every event starting with `prefix`.

  Subscribing twice to the same prefix is a no-op. Returns `{:error, {:invalid_prefix, term}}`
  unless `prefix` is a list of atoms.
  """
  @spec subscribe(prefix()) :: :ok | {:error, {:invalid_prefix, term()}}
  def subscribe(prefix) do
    with :ok <- check_prefix(prefix) do
      if subscribed?(prefix) do
        :ok
      else
        {:ok, _} = Registry.register(@registry, prefix, nil)
        GenServer.call(__MODULE__, {:subscribed, self()})
      end
    end
  end

  @doc """
  Removes the calling process's subscription to exactly `prefix`. Unknown prefixes are a no-op.
  """
  @spec unsubscribe(prefix()) :: :ok | {:error, {:invalid_prefix, term()}}
  def unsubscribe(prefix) do
    with :ok <- check_prefix(prefix) do
      if subscribed?(prefix) do
        :ok = Registry.unregister(@registry, prefix)
        GenServer.call(__MODULE__, {:unsubscribed, self()})
      else
        :ok
      end
    end
  end

  @doc false
  # How many subscriptions are live (tests check that dead subscribers are dropped).
  def subscription_count, do: :atomics.get(:persistent_term.get(@counter), 1)

  @doc "True when an event emitted now would reach anyone (a subscriber or `:telemetry`)."
  @spec enabled?() :: boolean()
  def enabled?, do: :persistent_term.get(@enabled, false)

  @doc """
  Emits `event` to its subscribers and to `:telemetry` (when loaded).

  Measurements and metadata must be maps; anything else is
  `{:error, {:invalid_event, {event, measurements, metadata}}}`.
  """
  @spec emit(event(), map(), map()) :: :ok | {:error, term()}
  def emit(event, measurements, metadata)
      when is_list(event) and is_map(measurements) and is_map(metadata) do
    if DSPex.Bridge.TelemetryAdapter.available?() do
      DSPex.Bridge.TelemetryAdapter.execute(event, measurements, metadata)
    end

    if :atomics.get(:persistent_term.get(@counter), 1) > 0 do
      dispatch([], event, {:dspex_event, event, measurements, metadata})
    end

    :ok
  end

  def emit(event, measurements, metadata),
    do: {:error, {:invalid_event, {event, measurements, metadata}}}

  defp dispatch(prefix, rest, message) do
    Registry.dispatch(@registry, prefix, fn entries ->
      for {pid, _} <- entries, do: send(pid, message)
    end)

    case rest do
      [next | more] -> dispatch(prefix ++ [next], more, message)
      # [] at the end of the name, or the tail of an improper one: nothing more to reach.
      _ -> :ok
    end
  end

  defp subscribed?(prefix), do: prefix in Registry.keys(@registry, self())

  defp check_prefix(prefix) when is_list(prefix) do
    if DSPex.Bridge.Options.proper_list?(prefix) and Enum.all?(prefix, &is_atom/1),
      do: :ok,
      else: {:error, {:invalid_prefix, prefix}}
  end

  defp check_prefix(prefix), do: {:error, {:invalid_prefix, prefix}}

  # The server only keeps the subscription count right when subscribers exit, so that
  # `emit/3` can skip the registry entirely when nobody listens.

  @impl true
  def init(:ok), do: {:ok, %{}}

  @impl true
  def handle_call({:subscribed, pid}, _from, counts) do
    counts =
      case counts do
        %{^pid => {ref, n}} -> Map.put(counts, pid, {ref, n + 1})
        _ -> Map.put(counts, pid, {Process.monitor(pid), 1})
      end

    :atomics.add(:persistent_term.get(@counter), 1, 1)
    {:reply, set_enabled(), counts}
  end

  def handle_call(:refresh, _from, counts), do: {:reply, set_enabled(), counts}

  def handle_call({:unsubscribed, pid}, _from, counts) do
    counts =
      case counts do
        %{^pid => {ref, 1}} ->
          Process.demonitor(ref, [:flush])
          Map.delete(counts, pid)

        %{^pid => {ref, n}} ->
          Map.put(counts, pid, {ref, n - 1})
      end

    :atomics.sub(:persistent_term.get(@counter), 1, 1)
    {:reply, set_enabled(), counts}
  end

  @impl true
  def handle_info({:DOWN, _ref, :process, pid, _reason}, counts) do
    {{_ref, n}, counts} = Map.pop(counts, pid)
    :atomics.sub(:persistent_term.get(@counter), 1, n)
    set_enabled()
    {:noreply, counts}
  end
end
