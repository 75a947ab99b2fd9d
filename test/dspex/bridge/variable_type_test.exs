defmodule DSPex.Bridge.VariableTypeTest do
  use ExUnit.Case, async: true
  alias DSPex.Bridge.VariableType, as: T

  doctest DSPex.Bridge.VariableType

  defp v(type, value, constraints \\ []) do
    {:ok, c} = T.normalize_constraints(type, constraints)
    T.validate(type, value, c)
  end

  test "floats: integers become floats, bounds hold, non-numbers refused" do
    assert {:ok, 2.0} = v(:float, 2)
    assert {:error, {:invalid_value, {:below_min, 0}}} = v(:float, -0.1, min: 0)
    assert {:ok, 0.0} = v(:float, 0, min: 0)
    assert {:error, {:invalid_value, {:expected, :float}}} = v(:float, "1.0")
  end

  test "integers refuse floats" do
    assert {:error, {:invalid_value, {:expected, :integer}}} = v(:integer, 1.0)

    assert {:error, {:invalid_constraints, {:bad_bound, :max, 1.5}}} =
             T.normalize_constraints(:integer, max: 1.5)
  end

  test "strings count characters, refuse invalid UTF-8 and oversized values" do
    assert {:ok, "ééé"} = v(:string, "ééé", max_length: 3)
    assert {:error, {:invalid_value, {:too_long, 2}}} = v(:string, "ééé", max_length: 2)
    assert {:error, {:invalid_value, {:too_short, 4}}} = v(:string, "abc", min_length: 4)
    assert {:error, {:invalid_value, {:expected, :string}}} = v(:string, <<0xFF, 0xFE>>)
    big = :binary.copy("a", 1_048_577)
    assert {:error, {:invalid_value, {:too_large, 1_048_576}}} = v(:string, big)
  end

  test "booleans" do
    assert {:ok, true} = v(:boolean, true)
    assert {:error, {:invalid_value, {:expected, :boolean}}} = v(:boolean, nil)
  end

  test "choices are required and enforced" do
    assert {:error, {:invalid_constraints, {:missing, :choices}}} =
             T.normalize_constraints(:choice, [])

    assert {:error, {:invalid_constraints, {:bad_choices, []}}} =
             T.normalize_constraints(:choice, choices: [])

    assert {:ok, 1} = v(:choice, 1, choices: [1, "a", :b])
    assert {:error, {:invalid_value, {:not_in_choices, [1]}}} = v(:choice, 2, choices: [1])
  end

  test "modules are atoms or strings, optionally from a list" do
    assert {:ok, MyModule} = v(:module, MyModule)
    assert {:ok, "Predict"} = v(:module, "Predict", choices: ["Predict", "ChainOfThought"])

    assert {:error, {:invalid_value, {:not_in_choices, _}}} =
             v(:module, "ReAct", choices: ["Predict"])

    assert {:error, {:invalid_value, {:expected, :module}}} = v(:module, 42)
    assert {:error, {:invalid_value, {:expected, :module}}} = v(:module, "")
  end

  test "embeddings: numbers only, exact dimensions, bounded size" do
    assert {:ok, [1.0, 2.0]} = v(:embedding, [1, 2.0], dimensions: 2)

    assert {:error, {:invalid_value, {:wrong_dimensions, 3, 2}}} =
             v(:embedding, [1, 2], dimensions: 3)

    assert {:error, {:invalid_value, {:expected, :embedding}}} = v(:embedding, [1, :a])
    assert {:error, {:invalid_value, {:expected, :embedding}}} = v(:embedding, [1 | 2])

    assert {:error, {:invalid_value, {:too_large, 65_536}}} =
             v(:embedding, List.duplicate(0.0, 65_537))

    assert {:error, {:invalid_constraints, {:bad_dimensions, 0}}} =
             T.normalize_constraints(:embedding, dimensions: 0)
  end

  test "tensors: rectangular nested lists with the declared shape" do
    assert {:ok, [[1, 2, 3], [4, 5, 6]]} = v(:tensor, [[1, 2, 3], [4, 5, 6]], shape: [2, 3])

    assert {:error, {:invalid_value, {:wrong_shape, [3, 2], [2, 3]}}} =
             v(:tensor, [[1, 2, 3], [4, 5, 6]], shape: [3, 2])

    assert {:error, {:invalid_value, :not_rectangular}} = v(:tensor, [[1, 2], [3]])
    assert {:error, {:invalid_value, :not_rectangular}} = v(:tensor, [1, [2]])
    assert {:error, {:invalid_value, {:expected, :tensor}}} = v(:tensor, [])
    assert {:error, {:invalid_value, {:expected, :tensor}}} = v(:tensor, [[1], [:x]])
    big = List.duplicate(List.duplicate(0, 1001), 1000)
    assert {:error, {:invalid_value, {:too_large, 1_000_000}}} = v(:tensor, big)

    assert {:error, {:invalid_constraints, {:bad_shape, [0]}}} =
             T.normalize_constraints(:tensor, shape: [0])
  end

  test "json: data as Python sees it, atoms stored as text" do
    demos = [%{question: "2+2?", answer: "4"}, %{"question" => "1+1?", "answer" => "2"}]

    assert {:ok, [%{"question" => "2+2?", "answer" => "4"}, %{"question" => "1+1?"} | _]} =
             v(:json, demos)

    assert {:ok, %{"n" => 1, "x" => 1.5, "ok" => true, "none" => nil, "role" => "user"}} =
             v(:json, %{n: 1, x: 1.5, ok: true, none: nil, role: :user})

    assert {:ok, nil} = v(:json, nil)
    assert {:ok, []} = v(:json, [], max_items: 0)
    assert {:error, {:invalid_value, {:too_many_items, 1}}} = v(:json, [1, 2], max_items: 1)
    assert {:error, {:invalid_value, :duplicate_key}} = v(:json, %{:a => 1, "a" => 2})
    assert {:error, {:invalid_value, {:json_key, 1}}} = v(:json, %{1 => "one"})
    assert {:error, {:invalid_value, {:json_key, nil}}} = v(:json, %{nil => "none"})
    assert {:error, {:invalid_value, {:expected, :json}}} = v(:json, {:a, 1})
    assert {:error, {:invalid_value, {:expected, :json}}} = v(:json, [1 | 2])
    assert {:error, {:invalid_value, {:expected, :json}}} = v(:json, <<255>>)
    assert {:error, {:invalid_value, {:expected, :json}}} = v(:json, [self()])
    assert {:error, {:invalid_value, {:out_of_range, :json}}} = v(:json, 2 ** 63)
    assert {:ok, _} = v(:json, -(2 ** 63))

    deep = Enum.reduce(1..33, 1, fn _, acc -> [acc] end)
    assert {:error, {:invalid_value, {:too_deep, 32}}} = v(:json, deep)
    assert {:ok, _} = v(:json, Enum.reduce(1..32, 1, fn _, acc -> [acc] end))
    # A million-deep list is refused at depth 33 without walking it all.
    assert {:error, {:invalid_value, {:too_deep, 32}}} =
             v(:json, Enum.reduce(1..1_000_000, 1, fn _, acc -> [acc] end))

    assert {:error, {:invalid_value, {:too_large, 100_000}}} = v(:json, List.duplicate(0, 100_000))

    assert {:error, {:invalid_value, {:too_large, 1_048_576}}} =
             v(:json, List.duplicate(String.duplicate("x", 1024), 1025))

    assert {:error, {:invalid_constraints, {:bad_bound, :max_items, -1}}} =
             T.normalize_constraints(:json, max_items: -1)
  end

  test "unknown types and constraints are refused" do
    assert {:error, {:invalid_type, :complex}} = T.normalize_constraints(:complex, [])

    assert {:error, {:invalid_constraints, {:unknown_constraint, :float, :step}}} =
             T.normalize_constraints(:float, step: 0.1)

    assert {:error, {:invalid_constraints, {:not_a_map, "x"}}} =
             T.normalize_constraints(:float, "x")

    assert {:error, {:invalid_constraints, {:not_a_map, [1, 2]}}} =
             T.normalize_constraints(:float, [1, 2])
  end
end
