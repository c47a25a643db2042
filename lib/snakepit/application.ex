defmodule Snakepit.Application do
  @moduledoc false
  # Starts what makes this node one door of a cluster-wide bridge: the `:pg`
  # scope where nodes announce the sessions they own, and the
  # `Snakepit.Bridge.Cluster` process that keeps those announcements and
  # carries calls for sessions owned elsewhere. On a node that is not
  # distributed both sit idle.

  use Application

  @impl true
  def start(_type, _args) do
    children = [
      %{id: :pg, start: {:pg, :start_link, [Snakepit.Bridge.Cluster.scope()]}},
      Snakepit.Bridge.Cluster
    ]

    Supervisor.start_link(children, strategy: :rest_for_one, name: Snakepit.Supervisor)
  end
end
