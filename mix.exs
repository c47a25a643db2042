defmodule Snakepit.MixProject do
  use Mix.Project

  def project do
    [
      app: :snakepit,
      version: "0.1.0",
      elixir: "~> 1.14",
      start_permanent: Mix.env() == :prod,
      # The NIF is built by cargo before Elixir compiles; see Mix.Tasks.Compile.SnakepitNif below.
      compilers: [:snakepit_nif] ++ Mix.compilers(),
      elixirc_paths: elixirc_paths(Mix.env()),
      deps: []
    ]
  end

  def application do
    [extra_applications: [:logger]]
  end

  defp elixirc_paths(:test), do: ["lib", "test/support"]
  defp elixirc_paths(_), do: ["lib"]
end

defmodule Mix.Tasks.Compile.SnakepitNif do
  @moduledoc false
  # Builds native/snakepit_nif with `cargo build --release` and copies the
  # library to priv/native/. cargo's own freshness check makes a no-op build
  # take a fraction of a second; the copy happens only when the library changed.
  use Mix.Task.Compiler

  @impl true
  def run(_args) do
    root = Path.expand(".", __DIR__)
    target_dir = System.get_env("CARGO_TARGET_DIR") || Path.join(root, "target")

    case System.cmd("cargo", ["build", "--release", "-p", "snakepit_nif", "--quiet"],
           cd: root,
           stderr_to_stdout: true,
           env: [{"CARGO_TARGET_DIR", target_dir}]
         ) do
      {_, 0} ->
        copy_library(
          Path.join([target_dir, "release", "libsnakepit_nif.so"]),
          Path.join([root, "priv", "native", "libsnakepit_nif.so"])
        )

      {output, status} ->
        Mix.shell().error(output)
        Mix.raise("cargo build of the snakepit NIF failed with exit status #{status}")
    end
  end

  defp copy_library(from, to) do
    if File.exists?(to) and File.stat!(from).mtime <= File.stat!(to).mtime do
      {:noop, []}
    else
      File.mkdir_p!(Path.dirname(to))
      # Copy to a new inode: a VM that has the old library loaded keeps its mapping.
      tmp = to <> ".tmp"
      File.cp!(from, tmp)
      File.rename!(tmp, to)
      {:ok, []}
    end
  end
end
