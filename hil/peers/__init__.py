"""SM-DP+ and eIM peers for tests, demos and rigs."""
