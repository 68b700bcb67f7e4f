"""Generation benchmarks run after training (``benchmark=<name>``)."""
