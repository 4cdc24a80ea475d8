"""The wire contract: request and response schemas shared by the SDK, the server and the agent.

Every HTTP body that crosses a process boundary is one of the models in this package, so the
OpenAPI document the server publishes is the whole protocol.
"""
