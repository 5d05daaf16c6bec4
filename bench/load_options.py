"""Defaults of the load generator, apart so the CLI can show them without importing gRPC."""

ARRIVALS = ("constant", "poisson")
# Connections per sweep (at most one per closed-loop caller). A server with several workers on
# one port (SO_REUSEPORT) gets each connection on one worker, chosen by a hash of its address:
# several per worker make it likely that every worker is loaded.
DEFAULT_CHANNELS = 8
# Open loop: requests in flight per client process before the sender waits for a slot. It bounds
# the client's memory when the server falls far behind; the wait still counts in the latency.
DEFAULT_MAX_IN_FLIGHT = 4096
