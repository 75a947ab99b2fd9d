defmodule Mix.Tasks.Dspex.Python.Setup do
  @shortdoc "Makes a Python virtual environment with the dspex_bridge package and its deps"
  @moduledoc """
  Makes (or updates) a virtual environment for the bridge's Python workers and installs the
  `dspex_bridge` package (from this dependency's `priv/python`) with `protobuf` and `grpcio`
  from PyPI; `--dspy` adds the package's `dspy` extra (DSPy 3.4 or newer, under 4), and
  `--extra PKG` (repeatable) any other package.

      mix dspex.python.setup                 # into _build/dspex_python
      mix dspex.python.setup --dspy          # with DSPy, for dspex_bridge.dspy
      mix dspex.python.setup --path .venv --python python3.11 --extra numpy

  It prints the interpreter to use: pass it as `python:` to
  `DSPex.Bridge.PythonWorker.start_pool/2`, or set `config :dspex_bridge, python: "..."` or
  `DSPEX_PYTHON`. An environment that already has the package is left as it is unless
  `--force` is given.
  """
  use Mix.Task

  @impl true
  def run(args) do
    {opts, _} =
      OptionParser.parse!(args,
        strict: [path: :string, python: :string, extra: :keep, dspy: :boolean, force: :boolean]
      )

    dir =
      Keyword.get(opts, :path, Path.join(Path.dirname(Mix.Project.build_path()), "dspex_python"))

    dir = Path.expand(dir)
    python = Path.join([dir, "bin", "python"])
    package = Path.join(Application.app_dir(:dspex_bridge, "priv"), "python")
    package = if File.dir?(package), do: package, else: Path.expand("priv/python")

    if opts[:force] || not ready?(python, opts) do
      base =
        System.find_executable(Keyword.get(opts, :python, "python3")) ||
          Mix.raise("python3 not found")

      Mix.shell().info("==> Python environment in #{dir}")
      cmd!(base, ["-m", "venv", dir])
      cmd!(python, ["-m", "pip", "install", "--quiet", "--upgrade", "pip"])
      extras = Keyword.get_values(opts, :extra)
      # Built from a copy: a build writes build/ and *.egg-info beside its sources, and a
      # dependency's priv/ is no place for them.
      copy =
        Path.join(System.tmp_dir!(), "dspex_bridge_python_#{System.unique_integer([:positive])}")

      File.cp_r!(package, copy)

      target = if opts[:dspy], do: copy <> "[dspy]", else: copy

      try do
        cmd!(python, ["-m", "pip", "install", "--quiet", target | extras])
      after
        File.rm_rf(copy)
      end
    end

    Mix.shell().info(python)
  end

  defp ready?(python, opts) do
    dspy = if opts[:dspy], do: ["dspy", "dspex_bridge.dspy"], else: []
    imports = ["dspex_bridge", "google.protobuf", "grpc" | dspy] ++ Keyword.get_values(opts, :extra)
    imports = Enum.join(imports, ",")

    File.exists?(python) and
      match?({_, 0}, System.cmd(python, ["-c", "import #{imports}"], stderr_to_stdout: true))
  end

  defp cmd!(exe, args) do
    case System.cmd(exe, args, stderr_to_stdout: true, into: IO.stream(:stdio, :line)) do
      {_, 0} ->
        :ok

      {_, status} ->
        Mix.raise("#{Path.basename(exe)} #{Enum.join(args, " ")} failed (exit #{status})")
    end
  end
end
