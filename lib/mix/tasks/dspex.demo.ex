defmodule Mix.Tasks.Dspex.Demo do
  @shortdoc "Runs the dspex_bridge demo (examples/demo.exs)"
  @moduledoc """
  Runs `examples/demo.exs`: a tour of the bridge in plain words, in a few seconds.

      mix dspex.demo
  """
  use Mix.Task

  @impl true
  def run(_args) do
    Mix.Task.run("app.start")
    root = Path.dirname(Mix.Project.project_file())
    Code.require_file(Path.join(root, "examples/demo.exs"))
  end
end
