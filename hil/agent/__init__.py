"""Reference device agent (`python -m hil.agent`): see hil/agent/agent.py and docs/device-link.md."""

from gateway.links.batch_runner import Backend, BatchRunner
from hil.agent.agent import AGENT_VERSION, Agent, AgentTransport, SessionReport

__all__ = ["AGENT_VERSION", "Agent", "AgentTransport", "Backend", "BatchRunner", "SessionReport"]
