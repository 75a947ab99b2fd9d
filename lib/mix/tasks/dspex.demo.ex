defmodule Mix.Tasks.Dspex.Demo do
  @shortdoc "Runs the dspex_bridge demo (priv/demo/demo.exs)"
  @moduledoc """
  Runs the bridge's demo, `priv/demo/demo.exs`: a tour in plain words, in a few seconds.
  It ships in the package's `priv/`, so it also runs from a project that depends on
  `dspex_bridge` (its Python section needs the interpreter `mix dspex.python.setup` makes,
  as `config :dspex_bridge, python: ...` or `DSPEX_PYTHON`).

      mix dspex.demo
  """
  use Mix.Task

  @impl true
  def run(_args) do
    Mix.Task.run("app.start")
    Code.require_file(Path.join(:code.priv_dir(:dspex_bridge), "demo/demo.exs"))
  end
end
