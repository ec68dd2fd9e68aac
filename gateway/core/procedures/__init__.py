"""One module per IPA procedure, each one state machine with one transition table."""
