defmodule DSPex.Bridge.RateLimiter do
  @moduledoc """
  Per-session rate limits (token buckets): the abuse guard in front of the Python bridge.

      :ok = DSPex.Bridge.RateLimiter.start_limiter(:python_calls, capacity: 20, per_second: 10)
      :ok = DSPex.Bridge.RateLimiter.check(:python_calls, "session_1")
      # ... {:error, {:rate_limited, 100}} once session_1 has used its burst: retry in 100 ms

  or in a supervision tree, for as long as the tree runs:
  `{DSPex.Bridge.RateLimiter, name: :python_calls, capacity: 20, per_second: 10}`.

  Each session has its own bucket of `capacity` tokens refilled at `per_second`; memory is
  bounded by `max_sessions` (default 100,000): past it, full buckets are forgotten.
  Starting a limiter that exists with the same settings is `:ok` (installs are idempotent);
  with other settings it is `{:error, {:already_started_with_other_options, name}}`.
  """

  alias DSPex.Bridge.{Events, Native, Options}
  import DSPex.Bridge.Options, only: [is_id: 1]

  @table :dspex_bridge_rate_limiters

  @doc """
  A child spec: `{DSPex.Bridge.RateLimiter, name: name, capacity: ..., per_second: ...}`
  installs the limiter while the child runs and removes it when it stops.
  """
  def child_spec(:system),
    do: DSPex.Bridge.TableOwner.child_spec({@table, [:set, read_concurrency: true]})

  def child_spec(opts),
    do: DSPex.Bridge.Installation.named_child_spec(__MODULE__, opts, :delete_limiter)

  @doc false
  def install(name, opts) do
    with :ok <- start_limiter(name, opts), do: {:ok, name}
  end

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
      settings =
        {Map.get(o, :capacity, 10) * 1.0, Map.get(o, :per_second, 10) * 1.0,
         Map.get(o, :max_sessions, 100_000)}

      # The limiter row is what `check/2` reads.
      DSPex.Bridge.Installation.claim(@table, name, settings, fn ->
        {capacity, per_second, max_sessions} = settings
        :ets.insert(@table, {name, Native.rate_limiter_new(capacity, per_second, max_sessions)})
      end)
    end
  end

  def start_limiter(name, _opts), do: {:error, {:invalid_name, name}}

  @doc """
  Takes a token for `session_id`: `:ok`, or `{:error, {:rate_limited, retry_after_ms}}`
  with the milliseconds until the session's next token (`:infinity` for a limiter that does
  not refill, `per_second: 0`).
  """
  @spec check(atom() | String.t(), term()) ::
          :ok | {:error, {:rate_limited, non_neg_integer() | :infinity} | term()}
  def check(name, _session_id) when not (is_atom(name) or is_binary(name)),
    do: {:error, {:unknown_limiter, name}}

  def check(name, session_id) when is_id(session_id) do
    case :ets.lookup(@table, name) do
      [{_, limiter}] ->
        case Native.rate_limiter_take(limiter, session_id) do
          :ok ->
            :ok

          refused ->
            retry_after = if refused == :never, do: :infinity, else: ceil_ms(elem(refused, 1))

            Events.emit([:dspex, :bridge, :breaker, :rejected], %{}, %{
              name: name,
              session_id: session_id,
              reason: :rate_limited,
              retry_after_ms: retry_after
            })

            {:error, {:rate_limited, retry_after}}
        end

      [] ->
        {:error, {:unknown_limiter, name}}
    end
  rescue
    # Atom ids outside Latin-1 cannot cross the NIF boundary on OTP 25.
    ArgumentError -> {:error, {:invalid_session_id, session_id}}
  end

  def check(_name, session_id), do: {:error, {:invalid_session_id, session_id}}

  defp ceil_ms(ns), do: div(ns + 999_999, 1_000_000)

  @doc "Removes a limiter."
  @spec delete_limiter(atom() | String.t()) :: :ok
  def delete_limiter(name) do
    :ets.delete(@table, name)
    :ets.delete(@table, {:settings, name})
    :ok
  end
end
