defmodule DSPex.Bridge.Fuzz do
  @moduledoc false
  # Bad-input fuzzing of the public API and of the raw NIFs.
  #
  # Terms come from a fixed pool of wrong (and a few right) values, drawn by a seeded
  # generator so that every failure names a seed and an index that reproduce it. The pool
  # covers what a careless or hostile caller passes: every type, improper lists, deep
  # nesting, integers past 64 bits, invalid UTF-8, atoms outside Latin-1, funs, pids, refs.

  @doc "The pool of terms; `extra` are values of the run's own (a session id, a resource)."
  def pool(extra \\ []) do
    deep_list = Enum.reduce(1..300, 1, fn _, acc -> [acc] end)
    deep_map = Enum.reduce(1..300, 1, fn _, acc -> %{"k" => acc} end)
    deep_tuple = Enum.reduce(1..300, 1, fn _, acc -> {acc} end)

    [
      nil,
      true,
      false,
      :ok,
      :error,
      :a,
      :π,
      :dave_é,
      :"",
      0,
      1,
      -1,
      7,
      255,
      256,
      2 ** 31,
      2 ** 32,
      2 ** 63,
      2 ** 64,
      2 ** 1100,
      -(2 ** 70),
      0.0,
      -1.5,
      0.5,
      1.0e300,
      "",
      "a",
      "π",
      String.duplicate("x", 256),
      String.duplicate("y", 70_000),
      <<0xFF>>,
      <<0xFE, 0xFF, 0x00>>,
      <<1::size(3)>>,
      [],
      [1 | 2],
      [:a | :b],
      [nil],
      [false],
      [1, 2, 3],
      [0.5, 1.5],
      ["a", "b"],
      [a: 1],
      [timeout: 2 ** 63],
      [timeout: 0],
      [caller: :a],
      [session_id: [1 | 2]],
      [{:a, 1} | :tail],
      [<<0xFF>>],
      [{}],
      {},
      {:a},
      {:a, 1},
      {:a, :b, :c},
      {:ok, [1 | 2]},
      {:time, 2 ** 50},
      {:count, 2 ** 40},
      {:regex, "("},
      {:prefix, <<0xFF>>},
      {:cidr, ["not an ip"]},
      {fn -> :ok end, [nil]},
      {{:erlang, :abs}, [:a]},
      %{},
      %{a: 1},
      %{1 => 2},
      %{"a" => [1 | 2]},
      %{a: nil, b: [1 | 2]},
      %{__struct__: Nope},
      deep_list,
      deep_map,
      deep_tuple,
      # Pids of processes that are gone: a lock or a watch taken for one ends at once
      # (a live one would hold a lock for the rest of the run).
      spawn(fn -> :ok end),
      make_ref(),
      fn -> :ok end,
      fn _ -> :ok end,
      &String.length/1
    ] ++ extra
  end

  @doc """
  `n` argument lists of `arity` terms drawn by `seed`: each term from `anchors` (the run's
  own sessions, variables, resources) half of the time, so that calls reach real state with
  wrong terms beside it, else from `pool`.
  """
  def arg_lists(pool, anchors, arity, n, seed) do
    state = :rand.seed_s(:exsss, seed)
    pool = List.to_tuple(pool)
    anchors = List.to_tuple(anchors)

    {lists, _} =
      Enum.map_reduce(1..n, state, fn _, st ->
        Enum.map_reduce(1..arity//1, st, fn _, st ->
          {coin, st} = :rand.uniform_s(2, st)
          from = if coin == 1 and tuple_size(anchors) > 0, do: anchors, else: pool
          {i, st} = :rand.uniform_s(tuple_size(from), st)
          {elem(from, i - 1), st}
        end)
      end)

    lists
  end

  @doc """
  Calls `module.fun(args)` in a process of its own, at most `timeout` ms: `{:returned, v}`,
  `{:raised, exception}`, `{:exited, reason}`, `{:thrown, v}` or `:hung` (then killed).
  """
  def outcome(module, fun, args, timeout \\ 5_000) do
    caller = self()

    {pid, ref} =
      spawn_monitor(fn ->
        result =
          try do
            {:returned, apply(module, fun, args)}
          rescue
            e -> {:raised, e}
          catch
            :exit, reason -> {:exited, reason}
            :throw, value -> {:thrown, value}
          end

        send(caller, {self(), result})
      end)

    receive do
      {^pid, result} ->
        Process.demonitor(ref, [:flush])
        result

      {:DOWN, ^ref, :process, ^pid, reason} ->
        {:exited, reason}
    after
      timeout ->
        Process.exit(pid, :kill)
        :hung
    end
  end

  @doc "The documented functions of a module, every arity: `[{fun, arity}]`."
  def documented(module) do
    case Code.fetch_docs(module) do
      {:docs_v1, _, _, _, moduledoc, _, docs} when moduledoc != :hidden ->
        names =
          for {{:function, f, _}, _, _, doc, _} <- docs, doc != :hidden, into: MapSet.new(), do: f

        for {f, a} <- module.__info__(:functions), f in names, a > 0, do: {f, a}

      _ ->
        []
    end
  end
end
