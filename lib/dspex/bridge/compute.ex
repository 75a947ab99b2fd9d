defmodule DSPex.Bridge.Compute do
  @moduledoc """
  The functions of computed variables.

  A computed variable's function is one of:

    * a one-argument fun (`fn inputs -> ... end`): given by Elixir code at registration,
      it stays in this VM: `SessionStore.export_session/2` refuses a session holding one
      with `{:error, {:not_exportable, {:closure_compute, name}}}`;
    * `{module, function}`: `module.function(inputs)`;
    * `{module, function, extra_args}`: `module.function(inputs, extra_arg, ...)`.

  `inputs` is a map of input name to value. The `{module, function}` forms are references to
  code already on this node, not code: they are what a snapshot may carry, checked on
  import with existing atoms only (the snapshot is decoded with `:safe`) and
  `function_exported?/3`. Which modules an import may name can be narrowed with
  `config :dspex_bridge, snapshot_compute_modules: [MyApp.Computed]` (default `:any`).
  """

  @typedoc "A compute function."
  @type t :: (map() -> term()) | {module(), atom()} | {module(), atom(), list()}

  @max_extra_args 16

  @doc """
  `{:ok, fun}` if `fun` is a compute function of one of the forms above whose code exists;
  `{:error, {:invalid_compute, detail}}` otherwise.
  """
  @spec check(term()) :: {:ok, t()} | {:error, term()}
  def check(fun) when is_function(fun, 1), do: {:ok, fun}
  def check({m, f} = ref) when is_atom(m) and is_atom(f), do: exported(ref, m, f, 1)

  def check({m, f, extra} = ref) when is_atom(m) and is_atom(f) and is_list(extra) do
    if DSPex.Bridge.Options.proper_list?(extra) and length(extra) <= @max_extra_args,
      do: exported(ref, m, f, 1 + length(extra)),
      else: {:error, {:invalid_compute, ref}}
  end

  def check(other), do: {:error, {:invalid_compute, other}}

  @doc """
  `check/1` for a function read from a snapshot: references only (no funs), to modules
  the `:snapshot_compute_modules` setting allows.
  """
  @spec check_imported(term()) :: {:ok, t()} | {:error, term()}
  def check_imported(fun) when is_function(fun), do: {:error, :code_in_snapshot}

  def check_imported(ref) when is_tuple(ref) and tuple_size(ref) in [2, 3] do
    allowed = Application.get_env(:dspex_bridge, :snapshot_compute_modules, :any)

    if allowed == :any or (is_list(allowed) and elem(ref, 0) in allowed),
      do: check(ref),
      else: {:error, {:module_not_allowed, elem(ref, 0)}}
  end

  def check_imported(other), do: {:error, {:invalid_compute, other}}

  @doc "True for a fun (as opposed to a reference): it cannot leave this VM in a snapshot."
  @spec closure?(t()) :: boolean()
  def closure?(fun), do: is_function(fun)

  @doc "Runs `fun` on the inputs map."
  @spec run(t(), map()) :: term()
  def run(fun, inputs) when is_function(fun, 1), do: fun.(inputs)
  def run({m, f}, inputs), do: apply(m, f, [inputs])
  def run({m, f, extra}, inputs), do: apply(m, f, [inputs | extra])

  defp exported(ref, m, f, arity) do
    # Only code on the code path is loaded here: a module named by a snapshot that is not
    # installed stays unknown.
    if Code.ensure_loaded?(m) and function_exported?(m, f, arity),
      do: {:ok, ref},
      else: {:error, {:invalid_compute, {:not_exported, ref}}}
  end
end
