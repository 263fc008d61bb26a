"""Benchmarks and soak runs: the gateway measured against the machine's own floor."""
