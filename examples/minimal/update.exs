# Elixir half of the minimal pair: starts the bridge, registers `temperature`
# and changes it every second. Run with `mix run examples/minimal/update.exs`,
# then run watch.py as it prints: with the address and a token that grants
# the session "minimal" only.
alias Snakepit.Bridge.{Server, SessionStore}

{:ok, _} = Supervisor.start_link([{Server, port: 0}], strategy: :one_for_one)
{:ok, _} = SessionStore.create_session("minimal")

{:ok, _} =
  SessionStore.register_variable("minimal", :temperature, :float, 0.5,
    constraints: %{min: 0.0, max: 2.0}
  )

env = Server.worker_env("minimal")

IO.puts(
  "run: SNAKEPIT_BRIDGE_ADDRESS=#{env["SNAKEPIT_BRIDGE_ADDRESS"]} " <>
    "SNAKEPIT_BRIDGE_TOKEN=#{env["SNAKEPIT_BRIDGE_TOKEN"]} " <>
    ".venv/bin/python examples/minimal/watch.py minimal"
)

for step <- Stream.iterate(1, &(&1 + 1)) do
  Process.sleep(1000)
  value = Float.round(0.5 + 0.4 * :math.sin(step / 3), 3)
  :ok = SessionStore.update_variable("minimal", :temperature, value)
  IO.puts("set temperature = #{value}")
end
