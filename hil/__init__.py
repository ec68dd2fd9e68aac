"""Hardware-in-the-loop stand-ins and rigs: software eUICC, PKI, peers, device agent."""
