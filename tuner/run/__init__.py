"""The execution stages of a run, each importing only the stages above it in this list.

plan      the study's spec with the run's options applied, validated; the trainable resolved
adapter   one trial: the trainable's epochs -> Optuna reports, pruning, MLflow records, trial states
open      the Optuna study (storage, sampler, pruner) and its MLflow experiment and parent run
launch    N local worker processes (`tuner run --workers N`), and `tuner create` for remote ones
execute   trials in this process until the budget is used; `join` is what each worker runs
finish    the report, and where to browse
group     a study group: each study to its budget, then the seeded re-runs
api       the top: run_study, create, join (what the CLI and a Python caller call)
"""
