"""Sweeps: many independent runs ("cells": an ablation's (variant, seed), a tuning trial) on
several devices or machines, without a scheduler of our own.

- ``LocalExecutor`` (``--devices 0,1,2,3`` or ``--devices cpu:4``): one cell per device at a
  time, each in its own Python process (``python -m kuda_mmsa.sweeps.executors CELL RESULT``)
  that sees only its device (CUDA_VISIBLE_DEVICES) and writes its output to
  ``<cell folder>/worker.log``.
- ``RayExecutor`` (``--executor ray [--address ADDR]``): each cell is a Ray task (one GPU
  each on a cluster with GPUs, else one CPU), on an embedded Ray (no address) or on a
  running cluster (``ray start``, e.g. inside a Slurm allocation). Ray is an optional extra:
  ``pip install -e '.[ray]'``.
- ``InlineExecutor``: the cells one after another in this process.

A cell names a module-level function and JSON-able keyword arguments; the executor adds
``gpu_ids`` ([0]: the one GPU the cell sees; []: CPU) and returns its JSON-able result.
The caller keeps the results (CSV rows) as cells finish, so a killed sweep restarted with the
same command runs only the missing cells.

``OptunaTuner`` (``--tuner optuna``, optional extra ``pip install -e '.[optuna]'``): TPE over
the tune section's candidate lists, a study in SQLite that a killed tuner resumes (trials
that were running are run again with the same parameters), trials on the same executors,
and pruning on the validation metric after every epoch (``EpochMonitor`` reports it from
the trial's process to the study).

Modules: ``cells`` (a cell, its result, calling it), ``executors`` (where cells run, and the
worker process), ``tuner`` (Optuna).
"""
