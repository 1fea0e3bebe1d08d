"""Search spaces, trials as cells, ASHA pruning and restarts (the matrix's ``search``,
``pruner`` and ``restarts`` blocks); see the README's "Search and pruning".

space.py: distributions, parsing, seeded sampling. checks.py, probes.py: validation.
trials.py: the SearchPlan (studies, slots, restarts as cells). refill.py: asking TPE trials
and choosing restarts during a sweep. study.py: the Optuna journal on NFS-safe files.
asha.py: the rungs and the decision. prune.py: the job's reporter (RunContext.should_prune).
"""
