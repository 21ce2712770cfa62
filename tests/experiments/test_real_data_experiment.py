"""The real-data experiment's grid: every data set from its native width up to D = 1024, MoE and
dense net at equal activated parameters."""

from moelab.analysis import count_parameters
from moelab.experiments.build import build_model, build_task
from moelab.experiments.config import TaskSpec
from moelab.experiments.registry import REAL_DATA, real_data


def test_the_experiment_compares_models_of_equal_activated_parameters():
    exp = real_data()
    runs = exp.runs()
    assert exp.seeds == 3 and len(runs) == 3 * 2 * sum(len(dims) for _, _, dims in REAL_DATA)
    assert {r.task.kind for r in runs} == {"real"}
    for name, classes, dims in REAL_DATA:
        task = build_task(TaskSpec(kind="real", dataset=name, D=dims[0])).task
        assert dims[0] == task.d_in and dims[-1] == 1024  # from the native width up to 1024
        for D in dims:
            pair = {r.model.kind: r for r in runs
                    if r.seed == 0 and r.task.dataset == name and r.task.D == D}
            assert pair["moe"].model.moe.num_experts == classes
            active = {k: count_parameters(build_model(r, D, classes)).active
                      for k, r in pair.items()}
            assert abs(active["dense"] / active["moe"] - 1) < 0.015, (name, D, active)
