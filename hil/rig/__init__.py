"""Hardware-in-the-loop rig: the project's flows on a real eUICC (modem, card reader) or the soft one.

    python -m hil.rig SCENARIO --backend soft|serial:/dev/ttyUSB2[,segment=128]|pcsc[:READER] \\
        --pki DIR [--eim URL --smdp URL] [--iccid ICCID] [--link memory|coap] [--agent device|gateway] [--json] \\
        [--i-know-this-changes-the-card]

Modules: backends (one interface for the software eUICC, an AT modem via gateway.links.serial,
PC/SC via pyscard), isdr (the probes' ES10b caller), probe (read-only probes and the test-card
check), peers (the SM-DP+/eIM admin client), gateway_rig (the gateway's engine + runtime +
the reference device agent on the rig's card), daemon_rig (the whole daemon with the agent over
CoAP/DTLS), scenarios, report (step log). See docs/hil.md.
"""

from hil.rig.backends import BACKEND_SYNTAX, RigBackend, open_backend, parse_spec
from hil.rig.scenarios import SCENARIOS, STATE_CHANGING, RigOptions, ScenarioResult, run_scenario

__all__ = ["BACKEND_SYNTAX", "SCENARIOS", "STATE_CHANGING", "RigBackend", "RigOptions", "ScenarioResult",
           "open_backend", "parse_spec", "run_scenario"]
