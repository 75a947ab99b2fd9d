defmodule DSPex.Bridge.NifFuzz do
  @moduledoc false
  # Random terms for every raw NIF, run in a VM of its own (an OS process) per batch, so
  # that a crash of the VM (a segfault, an abort) is seen by its exit status rather than
  # taking the test run down.
  #
  # A NIF may answer anything or raise ArgumentError (badarg) for a wrong type; a panic
  # (ErlangError :nif_panicked) or any other exception is a failure, and so is a VM that
  # does not finish its batch.

  alias DSPex.Bridge.{Fuzz, Native}

  # NIFs whose well-formed calls change settings the batch relies on, or that do nothing
  # with arguments: called, but not with random terms.
  @no_args_only [:load_nif, :events_set_enabled, :acl_set_audit_all]

  @doc "Every NIF of `DSPex.Bridge.Native` with its arity."
  def nifs do
    for {f, a} <- Native.__info__(:functions), f not in [:__info__, :module_info], do: {f, a}
  end

  @doc """
  Runs batch `seed` of `calls` calls in a new VM: `{exit_status, output}`. The child prints
  one line per call before making it, so the last line names the culprit of a crash.
  """
  def run_batch(seed, calls) do
    erl = System.find_executable("erl")
    paths = Enum.flat_map(:code.get_path(), &["-pa", List.to_string(&1)])
    eval = "'Elixir.DSPex.Bridge.NifFuzz':child(#{seed}, #{calls}), halt(0)."

    System.cmd(erl, paths ++ ["-noshell", "-eval", eval], stderr_to_stdout: true)
  end

  @doc false
  # In the child VM.
  def child(seed, calls) do
    # The NIF loads on first use of the module.
    Code.ensure_loaded!(Native)
    resources = resources()
    pool = Fuzz.pool(resources)
    state = :rand.seed_s(:exsss, {seed, 7, 11})
    nifs = List.to_tuple(for {f, a} <- nifs(), f not in @no_args_only, do: {f, a})

    {{failures, answered}, _} =
      Enum.reduce(1..calls, {{0, 0}, state}, fn i, {{failures, answered}, st} ->
        {k, st} = :rand.uniform_s(tuple_size(nifs), st)
        {fun, arity} = elem(nifs, k - 1)
        [args] = Fuzz.arg_lists(pool, resources, arity, 1, {seed, i, k})
        IO.puts("call #{i} #{fun}/#{arity}")

        case outcome(fun, args) do
          :answered ->
            {{failures, answered + 1}, st}

          :badarg ->
            {{failures, answered}, st}

          {:failure, what} ->
            IO.puts("FAILURE #{fun}(#{inspect(args, limit: 8, printable_limit: 40)}): #{what}")
            {{failures + 1, answered}, st}
        end
      end)

    IO.puts("nif fuzz batch #{seed}: #{calls} calls, #{answered} answered, #{failures} failures")
    if failures > 0, do: System.halt(3)
  end

  defp outcome(fun, args) do
    apply(Native, fun, args)
    :answered
  rescue
    ArgumentError -> :badarg
    e in ErlangError -> {:failure, inspect(e.original)}
    e -> {:failure, inspect(e)}
  catch
    kind, reason -> {:failure, inspect({kind, reason})}
  end

  # Real resources, so that random terms beside them reach the NIFs' bodies.
  defp resources do
    graph = Native.session_new()
    :ok = Native.session_load(graph, [{:a, 1, []}, {"b", 1, []}, {:π, 1, []}], [])
    {:ok, breaker} = Native.breaker_new({{:consecutive, 2}, 0.5, nil, 1, 1, 2.0, 1, 0.0, 1, 1, 1})
    engine = Native.analytics_init(10, 10, 16)
    coordinator = Native.coordinator_new()
    table = Native.ha_table_new("fuzz@127.0.0.1")
    limiter = Native.rate_limiter_new(1.0, 1.0, 10)
    {:ok, frame} = Native.snapshot_encode(:erlang.term_to_binary(%{format: 2}))
    Native.graph_publish("fuzz_session", graph)
    Native.acl_set_policy("fuzz_session", :a, :private, [])

    [
      graph,
      breaker,
      engine,
      coordinator,
      table,
      limiter,
      frame,
      "fuzz_session",
      :a,
      "b",
      :data,
      :read,
      :private,
      :histogram,
      :counter,
      :json,
      :all,
      {:last, 60}
    ]
  end
end
