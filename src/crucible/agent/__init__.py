"""The host agent: inventory, container runtime, and the sync loop with the control plane.

Start one with ``crucible agent --server URL --token T``, or embed it::

    from crucible.agent import Agent
    Agent(load_settings(), server_url=url, token=token).run()
"""

from crucible.agent.inventory import detect_inventory
from crucible.agent.main import Agent
from crucible.agent.runtime import ProcessRuntime

__all__ = ["Agent", "ProcessRuntime", "detect_inventory"]
