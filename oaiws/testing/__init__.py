"""An emulator of the Responses API WebSocket protocol, for tests, demos and benchmarks."""
