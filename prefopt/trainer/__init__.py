"""The one training loop of prefopt, in one folder. Start at ``loop.py``.

- ``loop.py``: ``run(cfg)`` (set up, resume, train, evaluate, benchmark, summarize) and ``train``, the loop.
- ``step.py``: ``optimizer_step`` (one update) and ``compute_losses`` (the loss call).
- ``setup.py``: ``build_setup`` -> ``TrainingSetup``, everything a run trains with, built once.
- ``checkpoint.py``: ``save(setup, step, counters, offset)`` / ``load(path, setup)``, resume.
- ``batching.py``: which examples go into which micro-batch, step and process.
- ``evaluation.py``: held-out loss and rewards. ``counters.py``: the run's running totals.
- ``summary.py``: summary.json. ``distributed.py``: DDP / DeepSpeed / FSDP plumbing.
  ``faults.py``: non-finite steps and the fault injection the resume tests use. ``progress.py``: the bar or log
  lines a person watching sees.

This package's ``__init__`` imports nothing, so that ``prefopt.benchmarks.runner`` can use the held-out
evaluation without importing the loop (which imports the runner).
"""
