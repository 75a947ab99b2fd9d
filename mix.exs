defmodule Mix.Tasks.Compile.DspexNif do
  @shortdoc "Builds the dspex_nif Rust crate and installs it under priv/native"
  @moduledoc """
  Mix compiler that builds the NIF without hex (no `rustler` Mix package needed).

  It runs `cargo build --release -p dspex_nif` in this project's directory whenever any
  Rust source, `Cargo.toml` or `Cargo.lock` of the workspace is newer than the installed
  library, then copies the library to `priv/native/` of the application, where
  `DSPex.Bridge.Native` loads it. It works the same when this project is a path or git
  dependency of another Mix project.

  Set `DSPEX_CARGO` to use another cargo binary; `CARGO_TARGET_DIR` is honoured.
  """
  use Mix.Task.Compiler

  @crate "dspex_nif"

  @impl true
  def run(_args) do
    root = Path.dirname(Mix.Project.project_file())
    installed = installed_path()

    if stale?(root, installed) do
      build!(root)
      install!(root, installed)
      {:ok, []}
    else
      {:noop, []}
    end
  end

  @impl true
  def clean do
    File.rm(installed_path())
    :ok
  end

  defp installed_path do
    Path.join([Mix.Project.app_path(), "priv", "native", "#{@crate}.so"])
  end

  defp stale?(root, installed) do
    case File.stat(installed, time: :posix) do
      {:ok, %{mtime: built}} -> Enum.any?(sources(root), &newer?(&1, built))
      {:error, _} -> true
    end
  end

  defp newer?(path, built) do
    case File.stat(path, time: :posix) do
      {:ok, %{mtime: mtime}} -> mtime > built
      {:error, _} -> true
    end
  end

  defp sources(root) do
    Path.wildcard(Path.join(root, "native/**/*.rs")) ++
      Path.wildcard(Path.join(root, "native/*/Cargo.toml")) ++
      Enum.filter([Path.join(root, "Cargo.toml"), Path.join(root, "Cargo.lock")], &File.exists?/1)
  end

  defp build!(root) do
    cargo = System.get_env("DSPEX_CARGO") || System.find_executable("cargo")

    unless cargo do
      Mix.raise("""
      cargo not found: dspex_bridge builds its NIF from Rust source.
      Install Rust 1.91+ (https://rustup.rs) or set DSPEX_CARGO to the cargo binary.
      """)
    end

    Mix.shell().info("Compiling NIF crate #{@crate} (cargo build --release)")

    {_, status} =
      System.cmd(cargo, ["build", "--release", "-p", @crate],
        cd: root,
        into: IO.stream(:stdio, :line),
        stderr_to_stdout: true
      )

    if status != 0, do: Mix.raise("cargo build of #{@crate} failed (exit #{status})")
  end

  defp install!(root, installed) do
    target_dir = System.get_env("CARGO_TARGET_DIR") || Path.join(root, "target")

    built =
      Enum.find(
        Enum.map(
          ["lib#{@crate}.so", "lib#{@crate}.dylib"],
          &Path.join([target_dir, "release", &1])
        ),
        &File.exists?/1
      ) ||
        Mix.raise("cargo finished but no lib#{@crate} library was found in #{target_dir}/release")

    File.mkdir_p!(Path.dirname(installed))
    # Copy to a temporary name and rename, so a running VM never sees a half-written file.
    tmp = installed <> ".tmp"
    File.cp!(built, tmp)
    File.rename!(tmp, installed)
    File.touch!(installed)
  end
end

defmodule DSPex.Bridge.MixProject do
  use Mix.Project

  @version "0.1.0"

  def project do
    [
      app: :dspex_bridge,
      version: @version,
      elixir: "~> 1.14",
      start_permanent: Mix.env() == :prod,
      compilers: [:dspex_nif | Mix.compilers()],
      elixirc_paths: elixirc_paths(Mix.env()),
      deps: deps(),
      docs: docs(),
      description: "Production hardening for the DSPex BridgedState backend (Rust NIF core)",
      package: [
        licenses: ["MIT"],
        files:
          ~w(lib native priv guides mix.exs Cargo.toml Cargo.lock README.md CHANGELOG.md LICENSE)
      ],
      test_coverage: [summary: [threshold: 0]]
    ]
  end

  def application do
    [
      extra_applications: [:logger, :inets, :crypto],
      mod: {DSPex.Bridge.Application, []}
    ]
  end

  # No hex dependencies. ex_doc only where hex can be reached and it is asked for
  # (`DSPEX_DOCS=1 mix deps.get && DSPEX_DOCS=1 mix docs`), so the default build stays hex-free.
  defp deps do
    if System.get_env("DSPEX_DOCS"),
      do: [{:ex_doc, ">= 0.30.0", only: :dev, runtime: false}],
      else: []
  end

  defp docs do
    [
      main: "readme",
      source_ref: "v#{@version}",
      extras:
        ["README.md", "CHANGELOG.md", "BENCHMARKS.md"] ++
          Enum.map(
            ~w(getting-started access-control optimizer-locks analytics clustering-ha python dspy deployment errors),
            &"guides/#{&1}.md"
          ),
      groups_for_extras: [Guides: ~r{guides/}]
    ]
  end

  defp elixirc_paths(:test), do: ["lib", "test/support"]
  defp elixirc_paths(_), do: ["lib"]
end
