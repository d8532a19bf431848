"""What several test modules share: fake upstreams and judges, the servers they start (the proxy in a
thread or in process, `hybridllm serve` as a subprocess, redis-server), the CLI runner, a browser.
No test module imports another; they import from here (fixtures live in ../conftest.py)."""
