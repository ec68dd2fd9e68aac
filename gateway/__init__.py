"""ipae-gateway: an SGP.32 IoT Profile Assistant serving many constrained devices."""

__version__ = "0.1.0"
