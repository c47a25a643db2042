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
    [mod: {Snakepit.Application, []}, extra_applications: [:logger]]
  end

  defp elixirc_paths(:test), do: ["lib", "test/support"]
  defp elixirc_paths(_), do: ["lib"]
end

defmodule Mix.Tasks.Compile.SnakepitNif do
  @moduledoc false
  # Builds native/snakepit_nif with `cargo build --release` and copies the
  # library to priv/native/. cargo's own freshness check makes a no-op build
  # take a fraction of a second; the copy happens only when the library changed.
  # A cold build takes minutes, so a line says so whenever the library is
  # missing or older than the sources cargo builds it from.
  use Mix.Task.Compiler

  # What the build reads: a change here means cargo has work to do.
  @inputs ~w(Cargo.toml Cargo.lock proto/*.proto native/*/Cargo.toml native/*/build.rs native/*/src/**/*.rs)

  @impl true
  def run(_args) do
    root = Path.expand(".", __DIR__)
    target_dir = System.get_env("CARGO_TARGET_DIR") || Path.join(root, "target")
    {built_name, loaded_name} = library_names()
    built = Path.join([target_dir, "release", built_name])

    cond do
      not File.exists?(built) ->
        Mix.shell().info(
          "Compiling the snakepit NIF with cargo (a first build takes a few minutes)…"
        )

      stale?(root, built) ->
        Mix.shell().info("Compiling the snakepit NIF with cargo…")

      true ->
        :ok
    end

    case System.cmd("cargo", ["build", "--release", "-p", "snakepit_nif", "--quiet"],
           cd: root,
           stderr_to_stdout: true,
           env: [{"CARGO_TARGET_DIR", target_dir}]
         ) do
      {_, 0} ->
        copy_library(built, Path.join([root, "priv", "native", loaded_name]))

      {output, status} ->
        Mix.shell().error(output)
        Mix.raise("cargo build of the snakepit NIF failed with exit status #{status}")
    end
  end

  # {what cargo writes, what Snakepit.Bridge.Native loads from priv/native/}:
  # :erlang.load_nif/2 appends .so on every Unix (macOS included) and .dll on Windows.
  defp library_names do
    case :os.type() do
      {:unix, :darwin} -> {"libsnakepit_nif.dylib", "libsnakepit_nif.so"}
      {:win32, _} -> {"snakepit_nif.dll", "libsnakepit_nif.dll"}
      _ -> {"libsnakepit_nif.so", "libsnakepit_nif.so"}
    end
  end

  defp stale?(root, built) do
    built_at = File.stat!(built, time: :posix).mtime

    @inputs
    |> Enum.flat_map(&Path.wildcard(Path.join(root, &1)))
    |> Enum.any?(fn path -> File.stat!(path, time: :posix).mtime > built_at end)
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
