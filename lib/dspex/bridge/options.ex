defmodule DSPex.Bridge.Options do
  @moduledoc false
  # Option checking shared by the feature modules: every public function validates its
  # keyword list here, so a typo or a wrong type is a clear `{:error, {:invalid_option, ...}}`
  # instead of a silently ignored key.

  @max_id_bytes 255
  # The longest wait the VM's timers take (`Process.send_after/3`, `receive ... after`).
  @max_ms 4_294_967_295

  @doc "True for an id the bridge accepts: an atom or a non-empty string of at most 255 bytes."
  defguard is_id(id)
           when is_atom(id) or
                  (is_binary(id) and byte_size(id) > 0 and byte_size(id) <= @max_id_bytes)

  @doc """
  Checks `opts` against `spec` (`key => validator`), returns a map of the given keys.

  A validator is a one-argument function returning true for good values.
  """
  @spec take(term(), %{atom() => (term() -> boolean())}) ::
          {:ok, map()} | {:error, {:invalid_option, term()}}
  def take([], _spec), do: {:ok, %{}}

  def take(opts, spec) when is_list(opts) do
    if proper_list?(opts),
      do: take_each(opts, spec),
      else: {:error, {:invalid_option, {:not_a_keyword_list, opts}}}
  end

  def take(other, _spec), do: {:error, {:invalid_option, {:not_a_keyword_list, other}}}

  defp take_each(opts, spec) do
    Enum.reduce_while(opts, {:ok, %{}}, fn
      {key, value}, {:ok, acc} when is_atom(key) ->
        case spec do
          %{^key => valid?} ->
            if valid?.(value),
              do: {:cont, {:ok, Map.put(acc, key, value)}},
              else: {:halt, {:error, {:invalid_option, {key, value}}}}

          _ ->
            {:halt, {:error, {:invalid_option, {:unknown, key}}}}
        end

      other, _acc ->
        {:halt, {:error, {:invalid_option, other}}}
    end)
  end

  @doc "True for a keyword list; false for anything else (an improper list included)."
  @spec keyword?(term()) :: boolean()
  def keyword?(opts), do: proper_list?(opts) and Keyword.keyword?(opts)

  @doc "True for a proper list (`[1 | 2]` is not); false for anything else."
  @spec proper_list?(term()) :: boolean()
  def proper_list?([]), do: true
  def proper_list?([_ | tail]), do: proper_list?(tail)
  def proper_list?(_), do: false

  @doc """
  Applies `fun` (returning `{:ok, x}` or an error) to each item in order: `{:ok, [x]}`, or the
  first error.
  """
  @spec map_ok(list(), (term() -> {:ok, term()} | term())) :: {:ok, list()} | term()
  def map_ok(list, fun) do
    Enum.reduce_while(list, {:ok, []}, fn item, {:ok, acc} ->
      case fun.(item) do
        {:ok, x} -> {:cont, {:ok, [x | acc]}}
        error -> {:halt, error}
      end
    end)
    |> case do
      {:ok, acc} -> {:ok, Enum.reverse(acc)}
      error -> error
    end
  end

  @doc false
  def id?(id) when is_id(id), do: true
  def id?(_), do: false

  @doc false
  # The ids a name given as text (or as an atom) may stand for: the text and the atom of
  # that text if one exists (an atom and its text). No atom is ever created.
  @spec spellings(atom() | String.t()) :: [atom() | String.t()]
  def spellings(name) when is_atom(name), do: [name, Atom.to_string(name)]

  def spellings(text) when is_binary(text) do
    [text, String.to_existing_atom(text)]
  rescue
    ArgumentError -> [text]
  end

  @doc "The longest time in milliseconds any option takes: the VM's timer limit (~49.7 days)."
  def max_ms, do: @max_ms

  @doc false
  def timeout?(:infinity), do: true
  def timeout?(t), do: ms?(t)

  @doc "A duration in milliseconds the VM's timers accept: an integer in 0..max_ms()."
  def ms?(t), do: is_integer(t) and t >= 0 and t <= @max_ms

  @doc "A positive duration in milliseconds the VM's timers accept."
  def pos_ms?(t), do: is_integer(t) and t > 0 and t <= @max_ms

  @doc false
  def int_in?(n, lo, hi), do: is_integer(n) and n >= lo and n <= hi

  @doc false
  def pos_integer?(n), do: is_integer(n) and n > 0

  @doc false
  def non_neg_integer?(n), do: is_integer(n) and n >= 0
end
