defmodule DSPex.Bridge.RateLimiter do
  @moduledoc """
  Per-session rate limits (token buckets): the abuse guard in front of the Python bridge.

      :ok = DSPex.Bridge.RateLimiter.start_limiter(:python_calls, capacity: 20, per_second: 10)
      :ok = DSPex.Bridge.RateLimiter.check(:python_calls, "session_1")
      # ... {:error, :rate_limited} once session_1 has used its burst and refill

  Each session has its own bucket of `capacity` tokens refilled at `per_second`; memory is
  bounded by `max_sessions` (default 100,000): past it, full buckets are forgotten.
  """

  alias DSPex.Bridge.{Events, Native, Options}
  import DSPex.Bridge.Options, only: [is_id: 1]

  @table :dspex_bridge_rate_limiters

  @doc false
  def child_spec(_),
    do: DSPex.Bridge.TableOwner.child_spec({@table, [:set, read_concurrency: true]})

  @max_rate 1.0e12
  @max_sessions 10_000_000

  @doc """
  Creates a named limiter. Options: `capacity:` (burst, 1..10^12, default 10), `per_second:`
  (0..10^12, default 10), `max_sessions:` (1..10,000,000, default 100,000).
  """
  @spec start_limiter(atom() | String.t(), keyword()) :: :ok | {:error, term()}
  def start_limiter(name, opts) when is_atom(name) or is_binary(name) do
    spec = %{
      capacity: &(Options.pos_integer?(&1) and &1 <= @max_rate),
      per_second: &(is_number(&1) and &1 >= 0 and &1 <= @max_rate),
      max_sessions: &Options.int_in?(&1, 1, @max_sessions)
    }

    with {:ok, o} <- Options.take(opts, spec) do
      limiter =
        Native.rate_limiter_new(
          Map.get(o, :capacity, 10) * 1.0,
          Map.get(o, :per_second, 10) * 1.0,
          Map.get(o, :max_sessions, 100_000)
        )

      if :ets.insert_new(@table, {name, limiter}), do: :ok, else: {:error, {:already_started, name}}
    end
  end

  def start_limiter(name, _opts), do: {:error, {:invalid_name, name}}

  @doc "Takes a token for `session_id`: `:ok` or `{:error, :rate_limited}`."
  @spec check(atom() | String.t(), term()) :: :ok | {:error, term()}
  def check(name, session_id) when is_id(session_id) do
    case :ets.lookup(@table, name) do
      [{_, limiter}] ->
        if Native.rate_limiter_take(limiter, session_id) do
          :ok
        else
          Events.emit([:dspex, :bridge, :breaker, :rejected], %{}, %{
            name: name,
            session_id: session_id,
            reason: :rate_limited
          })

          {:error, :rate_limited}
        end

      [] ->
        {:error, {:unknown_limiter, name}}
    end
  rescue
    # Atom ids outside Latin-1 cannot cross the NIF boundary on OTP 25.
    ArgumentError -> {:error, {:invalid_session_id, session_id}}
  end

  def check(_name, session_id), do: {:error, {:invalid_session_id, session_id}}

  @doc "Removes a limiter."
  @spec delete_limiter(atom() | String.t()) :: :ok
  def delete_limiter(name) do
    :ets.delete(@table, name)
    :ok
  end
end
