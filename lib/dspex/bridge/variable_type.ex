defmodule DSPex.Bridge.VariableType do
  @moduledoc """
  The variable types of the BridgedState backend and their constraints.

  | type         | values                                   | constraints                          |
  |--------------|------------------------------------------|--------------------------------------|
  | `:float`     | numbers (integers are stored as floats)  | `min`, `max`                         |
  | `:integer`   | integers                                 | `min`, `max`                         |
  | `:string`    | UTF-8 binaries                           | `min_length`, `max_length` (chars)   |
  | `:boolean`   | `true`, `false`                          | none                                 |
  | `:choice`    | one of `choices`                         | `choices` (required, non-empty list) |
  | `:module`    | a module name: atom or string            | `choices` (optional)                 |
  | `:embedding` | a flat list of numbers (stored as floats)| `dimensions`                         |
  | `:tensor`    | nested lists of numbers, rectangular     | `shape` (list of positive integers)  |
  | `:json`      | JSON-shaped data (see below)             | `max_items` (top-level list length)  |

  A `:json` value is `nil`, a boolean, a 64-bit integer, a float, a UTF-8 string, a list of
  such values or a map of them with string keys, nested at most 32 deep. Atom keys and atom
  values (other than `nil`, `true`, `false`) are stored as their text, so what Elixir writes
  is what Python reads and writes back: `%{question: "2+2?"}` is stored as
  `%{"question" => "2+2?"}`. It is the type for structured parameters such as DSPy demos
  (a list of example maps), results and usage.

  Hard limits keep one variable from exhausting memory: strings up to 1 MiB, embeddings up to
  65,536 dimensions, tensors up to 1,000,000 elements, `:json` values up to 100,000 elements
  and 1 MiB of text. Values are checked on every write.

  ## Errors

  `normalize_constraints/2` returns `{:error, {:invalid_type, t}}` or
  `{:error, {:invalid_constraints, detail}}`; `validate/3` returns
  `{:error, {:invalid_value, detail}}` where `detail` is one of `{:expected, type}`,
  `{:below_min, min}`, `{:above_max, max}`, `{:too_short, min_length}`,
  `{:too_long, max_length}`, `{:not_in_choices, choices}`, `{:wrong_dimensions, expected, got}`,
  `{:wrong_shape, expected, got}`, `{:too_large, limit}`, `:not_rectangular`,
  `{:too_many_items, max_items}`, `{:too_deep, 32}`, `{:json_key, key}`, `:duplicate_key`.
  """

  @types [:float, :integer, :string, :boolean, :choice, :module, :embedding, :tensor, :json]
  @max_string_bytes 1_048_576
  @max_embedding_dims 65_536
  # The largest integer with a float value (the largest finite double, as an integer).
  @max_float_int trunc(1.7976931348623157e308)
  @max_tensor_elements 1_000_000
  @max_json_elements 100_000
  @max_json_depth 32
  @min_int64 -9_223_372_036_854_775_808
  @max_int64 9_223_372_036_854_775_807

  @allowed %{
    float: [:min, :max],
    integer: [:min, :max],
    string: [:min_length, :max_length],
    boolean: [],
    choice: [:choices],
    module: [:choices],
    embedding: [:dimensions],
    tensor: [:shape],
    json: [:max_items]
  }

  @doc "The supported types."
  @spec types() :: [DSPex.Bridge.Variable.type()]
  def types, do: @types

  @doc """
  Checks `constraints` (a map or keyword list) for `type` and returns them as a map.

      iex> DSPex.Bridge.VariableType.normalize_constraints(:float, min: 0.0, max: 1.0)
      {:ok, %{min: 0.0, max: 1.0}}
      iex> DSPex.Bridge.VariableType.normalize_constraints(:float, min: 2, max: 1)
      {:error, {:invalid_constraints, {:min_above_max, 2, 1}}}
  """
  @spec normalize_constraints(term(), term()) :: {:ok, map()} | {:error, term()}
  def normalize_constraints(type, _constraints) when type not in @types,
    do: {:error, {:invalid_type, type}}

  def normalize_constraints(type, constraints) when is_list(constraints) do
    if Keyword.keyword?(constraints),
      do: normalize_constraints(type, Map.new(constraints)),
      else: {:error, {:invalid_constraints, {:not_a_map, constraints}}}
  end

  def normalize_constraints(type, constraints) when is_map(constraints) do
    allowed = Map.fetch!(@allowed, type)

    case Enum.find(Map.keys(constraints), &(&1 not in allowed)) do
      nil -> check_constraints(type, constraints)
      key -> {:error, {:invalid_constraints, {:unknown_constraint, type, key}}}
    end
  end

  def normalize_constraints(_type, other),
    do: {:error, {:invalid_constraints, {:not_a_map, other}}}

  defp check_constraints(type, c) when type in [:float, :integer] do
    with :ok <- number_or_nil(c, :min, type),
         :ok <- number_or_nil(c, :max, type) do
      case c do
        %{min: min, max: max} when min > max -> invalid({:min_above_max, min, max})
        _ -> {:ok, c}
      end
    end
  end

  defp check_constraints(:string, c) do
    with :ok <- non_neg_int_or_nil(c, :min_length),
         :ok <- non_neg_int_or_nil(c, :max_length) do
      case c do
        %{min_length: min, max_length: max} when min > max -> invalid({:min_above_max, min, max})
        _ -> {:ok, c}
      end
    end
  end

  defp check_constraints(:choice, c) do
    case c do
      %{choices: [_ | _] = choices} ->
        if proper_list?(choices), do: {:ok, c}, else: bad_choices(choices)

      %{choices: other} ->
        bad_choices(other)

      _ ->
        invalid({:missing, :choices})
    end
  end

  defp check_constraints(:module, c) do
    case c do
      %{choices: [_ | _] = choices} ->
        if proper_list?(choices) and Enum.all?(choices, &module_name?/1),
          do: {:ok, c},
          else: bad_choices(choices)

      %{choices: other} ->
        bad_choices(other)

      _ ->
        {:ok, c}
    end
  end

  defp check_constraints(:embedding, c) do
    case c do
      %{dimensions: d} when is_integer(d) and d > 0 and d <= @max_embedding_dims -> {:ok, c}
      %{dimensions: d} -> invalid({:bad_dimensions, d})
      _ -> {:ok, c}
    end
  end

  defp check_constraints(:tensor, c) do
    case c do
      %{shape: shape} ->
        if is_list(shape) and shape != [] and proper_list?(shape) and
             Enum.all?(shape, &(is_integer(&1) and &1 > 0)) and
             Enum.reduce(shape, 1, &(&1 * &2)) <= @max_tensor_elements,
           do: {:ok, c},
           else: invalid({:bad_shape, shape})

      _ ->
        {:ok, c}
    end
  end

  defp check_constraints(:boolean, c), do: {:ok, c}

  defp check_constraints(:json, c) do
    case c do
      %{max_items: n} when is_integer(n) and n >= 0 -> {:ok, c}
      %{max_items: n} -> invalid({:bad_bound, :max_items, n})
      _ -> {:ok, c}
    end
  end

  defp number_or_nil(c, key, type) do
    case Map.get(c, key) do
      nil -> :ok
      n when type == :integer and is_integer(n) -> :ok
      n when type == :float and is_number(n) -> :ok
      other -> invalid({:bad_bound, key, other})
    end
  end

  defp non_neg_int_or_nil(c, key) do
    case Map.get(c, key) do
      nil -> :ok
      n when is_integer(n) and n >= 0 -> :ok
      other -> invalid({:bad_bound, key, other})
    end
  end

  defp bad_choices(choices), do: invalid({:bad_choices, choices})
  defp invalid(detail), do: {:error, {:invalid_constraints, detail}}

  defp proper_list?(list) when is_list(list), do: :erlang.length(list) >= 0
  defp proper_list?(_), do: false

  defp module_name?(name), do: is_atom(name) or (is_binary(name) and byte_size(name) > 0)

  @doc """
  Checks `value` against `type` and its (normalized) constraints; returns the value as stored.

      iex> DSPex.Bridge.VariableType.validate(:float, 1, %{max: 2.0})
      {:ok, 1.0}
      iex> DSPex.Bridge.VariableType.validate(:integer, 7, %{max: 5})
      {:error, {:invalid_value, {:above_max, 5}}}
      iex> DSPex.Bridge.VariableType.validate(:choice, "b", %{choices: ["a"]})
      {:error, {:invalid_value, {:not_in_choices, ["a"]}}}
  """
  @spec validate(DSPex.Bridge.Variable.type(), term(), map()) :: {:ok, term()} | {:error, term()}
  def validate(_type, _v, c) when not is_map(c),
    do: {:error, {:invalid_constraints, {:not_a_map, c}}}

  def validate(:float, v, c) when is_float(v), do: bounded(v, c)

  # An integer past the largest float (~1.8e308) has no float value.
  def validate(:float, v, c) when is_integer(v) do
    if abs(v) <= @max_float_int, do: bounded(v * 1.0, c), else: bad({:out_of_range, :float})
  end

  def validate(:integer, v, c) when is_integer(v), do: bounded(v, c)

  def validate(:string, v, c) when is_binary(v) do
    cond do
      byte_size(v) > @max_string_bytes -> bad({:too_large, @max_string_bytes})
      not String.valid?(v) -> bad({:expected, :string})
      true -> string_length(v, c)
    end
  end

  def validate(:boolean, v, _c) when is_boolean(v), do: {:ok, v}

  def validate(:choice, v, %{choices: choices}) do
    if v in choices, do: {:ok, v}, else: bad({:not_in_choices, choices})
  end

  def validate(:module, v, c) do
    cond do
      not module_name?(v) -> bad({:expected, :module})
      byte_size_of(v) > 255 -> bad({:too_large, 255})
      Map.has_key?(c, :choices) and v not in c.choices -> bad({:not_in_choices, c.choices})
      true -> {:ok, v}
    end
  end

  def validate(:embedding, v, c) when is_list(v) do
    with {:ok, floats, n} <- float_list(v, 0, []) do
      case c do
        %{dimensions: d} when d != n -> bad({:wrong_dimensions, d, n})
        _ -> {:ok, floats}
      end
    end
  end

  def validate(:tensor, v, c) when is_list(v) do
    with {:ok, shape} <- tensor_shape(v) do
      case c do
        %{shape: expected} when expected != shape -> bad({:wrong_shape, expected, shape})
        _ -> {:ok, v}
      end
    end
  end

  def validate(:json, v, c) do
    with {:ok, stored, _budget} <- json(v, 0, {@max_json_elements, @max_string_bytes}) do
      case c do
        %{max_items: n} when is_list(stored) and length(stored) > n -> bad({:too_many_items, n})
        _ -> {:ok, stored}
      end
    end
  end

  def validate(type, _v, _c), do: bad({:expected, type})

  defp bounded(v, c) do
    cond do
      Map.has_key?(c, :min) and v < c.min -> bad({:below_min, c.min})
      Map.has_key?(c, :max) and v > c.max -> bad({:above_max, c.max})
      true -> {:ok, v}
    end
  end

  defp string_length(v, c) do
    needs_length = Map.has_key?(c, :min_length) or Map.has_key?(c, :max_length)
    len = if needs_length, do: String.length(v), else: 0

    cond do
      Map.has_key?(c, :min_length) and len < c.min_length -> bad({:too_short, c.min_length})
      Map.has_key?(c, :max_length) and len > c.max_length -> bad({:too_long, c.max_length})
      true -> {:ok, v}
    end
  end

  defp byte_size_of(v) when is_atom(v), do: byte_size(Atom.to_string(v))
  defp byte_size_of(v), do: byte_size(v)

  defp float_list([], n, acc), do: {:ok, :lists.reverse(acc), n}
  defp float_list(_, n, _) when n >= @max_embedding_dims, do: bad({:too_large, @max_embedding_dims})

  defp float_list([x | rest], n, acc) when is_float(x),
    do: float_list(rest, n + 1, [x | acc])

  defp float_list([x | rest], n, acc) when is_integer(x) and abs(x) <= @max_float_int,
    do: float_list(rest, n + 1, [x * 1.0 | acc])

  defp float_list(_, _, _), do: bad({:expected, :embedding})

  # The shape of a rectangular nested list of numbers, checked without building more than
  # one list per level and refusing more than the element limit.
  defp tensor_shape(v) do
    case shape_of(v) do
      {:ok, shape} ->
        if Enum.reduce(shape, 1, &(&1 * &2)) > @max_tensor_elements,
          do: bad({:too_large, @max_tensor_elements}),
          else: {:ok, shape}

      error ->
        error
    end
  end

  defp shape_of([]), do: bad({:expected, :tensor})

  defp shape_of(list) when is_list(list) do
    if proper_list?(list), do: shape_of_items(list), else: bad({:expected, :tensor})
  end

  defp shape_of(_), do: bad({:expected, :tensor})

  defp shape_of_items([first | _] = list) when is_number(first) do
    n = length(list)

    cond do
      n > @max_tensor_elements -> bad({:too_large, @max_tensor_elements})
      Enum.all?(list, &is_number/1) -> {:ok, [n]}
      Enum.any?(list, &is_list/1) -> bad(:not_rectangular)
      true -> bad({:expected, :tensor})
    end
  end

  defp shape_of_items([first | _] = list) when is_list(first) do
    n = length(list)

    if n > @max_tensor_elements do
      bad({:too_large, @max_tensor_elements})
    else
      with {:ok, inner} <- shape_of(first) do
        Enum.reduce_while(list, {:ok, [n | inner]}, fn item, ok ->
          case shape_of(item) do
            {:ok, ^inner} -> {:cont, ok}
            {:ok, _other} -> {:halt, bad(:not_rectangular)}
            error -> {:halt, error}
          end
        end)
      end
    end
  end

  defp shape_of_items(_), do: bad({:expected, :tensor})

  # A :json value as stored (atoms as text), checked against the depth limit and a budget
  # of elements and text bytes that shrinks as it is walked, so a huge value is refused
  # without being copied whole.
  defp json(_v, depth, _budget) when depth > @max_json_depth, do: bad({:too_deep, @max_json_depth})
  defp json(_v, _depth, {0, _}), do: bad({:too_large, @max_json_elements})
  defp json(v, _depth, {n, b}) when v in [nil, true, false], do: {:ok, v, {n - 1, b}}

  defp json(v, _depth, {n, b}) when is_integer(v) do
    if v >= @min_int64 and v <= @max_int64,
      do: {:ok, v, {n - 1, b}},
      else: bad({:out_of_range, :json})
  end

  defp json(v, _depth, {n, b}) when is_float(v), do: {:ok, v, {n - 1, b}}
  defp json(v, depth, budget) when is_atom(v), do: json(Atom.to_string(v), depth, budget)

  defp json(v, _depth, {n, b}) when is_binary(v) do
    cond do
      byte_size(v) > b -> bad({:too_large, @max_string_bytes})
      not String.valid?(v) -> bad({:expected, :json})
      true -> {:ok, v, {n - 1, b - byte_size(v)}}
    end
  end

  defp json(v, depth, {n, b}) when is_list(v), do: json_list(v, depth + 1, {n - 1, b}, [])

  defp json(v, depth, {n, b}) when is_map(v) do
    entries = Map.to_list(v)

    with {:ok, stored, budget} <- json_entries(entries, depth + 1, {n - 1, b}, []) do
      # :a and "a" in one map would be one key once stored.
      if map_size(stored) == map_size(v), do: {:ok, stored, budget}, else: bad(:duplicate_key)
    end
  end

  defp json(_v, _depth, _budget), do: bad({:expected, :json})

  defp json_list([], _depth, budget, acc), do: {:ok, :lists.reverse(acc), budget}

  defp json_list([x | rest], depth, budget, acc) do
    with {:ok, stored, budget} <- json(x, depth, budget),
         do: json_list(rest, depth, budget, [stored | acc])
  end

  # An improper list.
  defp json_list(_tail, _depth, _budget, _acc), do: bad({:expected, :json})

  defp json_entries([], _depth, budget, acc), do: {:ok, Map.new(acc), budget}

  defp json_entries([{k, x} | rest], depth, budget, acc) when is_binary(k) or is_atom(k) do
    with {:ok, key, budget} <- json(k, depth, budget),
         true <- is_binary(key) || bad({:json_key, k}),
         {:ok, stored, budget} <- json(x, depth, budget),
         do: json_entries(rest, depth, budget, [{key, stored} | acc])
  end

  defp json_entries([{k, _} | _], _depth, _budget, _acc), do: bad({:json_key, k})

  defp bad(detail), do: {:error, {:invalid_value, detail}}
end
