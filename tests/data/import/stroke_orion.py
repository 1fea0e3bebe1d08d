"""The stroke group's MeshNet search with Oríon's ASHA (the training call is theirs)."""

from orion.client import create_experiment

experiment = create_experiment(
    name="meshnet_hpo",
    space={
        "channels": "uniform(5, 21, discrete=True)",
        "lr": "loguniform(1e-4, 4e-2)",
        "weight_decay": "loguniform(1e-4, 4e-2)",
        "bg_weight": "uniform(0, 1)",
        "warmup_pct": "choices([0.02, 0.1, 0.2])",
        "epochs": "fidelity(15, 50, base=2)",
    },
    algorithms={"asha": {"seed": 42, "num_rungs": 4, "num_brackets": 1}},
    max_trials=60,
)

while not experiment.is_done:
    trial = experiment.suggest()
    if trial is None:
        break
    dice = train_and_evaluate(**trial.params)  # noqa: F821
    experiment.observe(trial, [{"name": "dice", "type": "objective", "value": -dice}])
