"""Reference device agent (`python -m hil.agent`): see hil/agent/agent.py and docs/device-link.md."""

from hil.agent.agent import AGENT_VERSION, Agent, AgentTransport, SessionReport
from hil.agent.runner import Backend, BatchRunner

__all__ = ["AGENT_VERSION", "Agent", "AgentTransport", "Backend", "BatchRunner", "SessionReport"]
