"""The scenarios, one module each: ``run(...) -> dict`` of figures and ``table(figures) -> str``.

- ``warm``: (a) sequential warm latency, short and long responses;
- ``concurrency``: (b) 32 threads, mixed lengths, oaiws with 8 connections;
- ``cold``: (c) the first request of a new process;
- ``tool_loop``: (d) the 20-turn ``store: false`` tool loop (``benchmarks.conversation``);
- ``client_cost``: (e) client CPU per event and memory per idle connection.
"""
