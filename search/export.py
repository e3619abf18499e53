"""Export a search's best trials as ImageNet training jobs (`imagenet.export` writes each job).

    python -m search.export --study NAME --top 3         # the best 3 by the study's ranking (--rank-by)
    python -m search.export --study NAME --pareto        # the ranking / FLOPs Pareto front
    python -m search.export --study NAME --trial 17      # one trial

Each job goes to `results/<study>/export/<spec id>/`. The search calls
`export_trials(study, select_trials(study, top=3), results_dir)`; which trials is
`search.selection`'s decision.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Mapping, Sequence

import optuna
from optuna.trial import FrozenTrial

from imagenet.export import export_spec
from localvit.cli import run_cli
from localvit.spec import as_spec

from .selection import select_trials


def load_study(study: str, storage: str | None = None, results_dir: str | Path = "results") -> optuna.Study:
    """The search's study: SQLite at `<results_dir>/<study>/study.db` unless `storage` is a URL."""
    if storage is None:
        path = Path(results_dir) / study / "study.db"
        if not path.is_file():
            raise ValueError(f"study={study!r} is invalid: no {path}; accepted: a study of {results_dir}/ "
                             f"(or --storage URL)")
        storage = f"sqlite:///{path}"
    elif storage.startswith("sqlite:///") and not Path(storage[len("sqlite:///"):]).is_file():
        raise ValueError(f"storage={storage!r} is invalid; accepted: the URL of an existing study storage")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        return optuna.load_study(study_name=study, storage=storage)
    except KeyError:
        names = optuna.study.get_all_study_names(storage)
        raise ValueError(f"study={study!r} is invalid; accepted: {', '.join(names) or 'none in this storage'}") \
            from None


# -- writing jobs ---------------------------------------------------------------------------------

def export_trials(study: optuna.Study, trials: Sequence[FrozenTrial], results_dir: str | Path = "results") \
        -> list[Path]:
    """Write one job per trial under `<results_dir>/<study>/export/<spec id>/`; returns the folders."""
    baselines = _baselines(study)
    folders = []
    for trial in trials:
        spec = as_spec(trial.user_attrs["spec"])
        out = Path(results_dir) / study.study_name / "export" / spec.id
        folders.append(export_spec(spec, out, provenance=trial_provenance(study, trial, baselines),
                                   proxy=_proxy_figures(study, trial)))
    return folders


def trial_provenance(study: optuna.Study, trial: FrozenTrial, baselines: Mapping[str, Any] | None = None) \
        -> dict[str, Any]:
    """Where a trial's architecture came from: study, trial, settings, proxy protocol and result."""
    attrs = trial.user_attrs
    return {
        "study": study.study_name, "trial": trial.number, "state": trial.state.name,
        "feasible": all(c <= 0 for c in trial.constraints.values()), "constraints": trial.constraints,
        "objectives": study.user_attrs.get("objectives"), "values": trial.values,
        "baseline": attrs.get("baseline"), "params": trial.params,
        "search_costs": {k: attrs.get(k) for k in ("flops", "params", "proxy_flops", "proxy_params")},
        "settings": study.user_attrs.get("settings"), "proxy_protocol": study.user_attrs.get("proxy_protocol"),
        "proxy_result": {k: attrs.get(k) for k in (
            "epochs_trained", "full_fidelity", "val_acc_curve", "wall_time_s", "failure")}
        | {"val_top1": trial.values[0] if trial.values else None},
        "baselines": _baselines(study) if baselines is None else dict(baselines),
    }


def _proxy_figures(study: optuna.Study, trial: FrozenTrial) -> dict[str, Any]:
    protocol = study.user_attrs.get("proxy_protocol") or {}
    attrs = trial.user_attrs
    return {**{k: protocol.get(k) for k in ("dataset", "img_size", "patch_size", "in_chans", "num_classes",
                                            "width_mult", "epochs")},
            "flops": attrs.get("proxy_flops"), "params": attrs.get("proxy_params"),
            "val_top1": trial.values[0] if trial.values else None, "epochs_trained": attrs.get("epochs_trained"),
            "full_fidelity": attrs.get("full_fidelity"), "val_acc_curve": attrs.get("val_acc_curve")}


def _baselines(study: optuna.Study) -> dict[str, Any]:
    """The study's baselines with their proxy accuracy and costs, to judge the found ones by: the
    study's `baselines` attribute, else the trials marked with a `baseline` name."""
    trials = study.get_trials(deepcopy=False)
    numbers = study.user_attrs.get("baselines") or {
        t.user_attrs["baseline"]: t.number for t in trials if t.user_attrs.get("baseline")}
    by_number = {t.number: t for t in trials}
    result = {}
    for name, number in numbers.items():
        t = by_number.get(number)
        result[name] = {"trial": number, "state": t.state.name if t else None,
                        "val_top1": t.values[0] if t is not None and t.values else None,
                        **{k: t.user_attrs.get(k) if t else None for k in ("spec_id", "flops", "params")}}
    return result




def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m search.export", description=__doc__.split("\n\n")[0])
    parser.add_argument("--study", required=True,
                        help="study name (SQLite at <results>/<study>/study.db unless --storage)")
    parser.add_argument("--storage", help="Optuna storage URL of the study")
    parser.add_argument("--results", default="results", help="results folder (default: results)")
    pick = parser.add_mutually_exclusive_group(required=True)
    pick.add_argument("--top", type=int, metavar="K", help="the K best architectures by the study's ranking")
    pick.add_argument("--pareto", action="store_true", help="the ranking / FLOPs Pareto front")
    pick.add_argument("--trial", type=int, metavar="N", help="trial number N")
    parser.add_argument("--include-baselines", action="store_true", help="let --top / --pareto pick baselines")
    args = parser.parse_args(argv)
    study = load_study(args.study, args.storage, args.results)
    trials = select_trials(study, top=args.top, pareto=args.pareto, trial=args.trial,
                           include_baselines=args.include_baselines)
    for folder in export_trials(study, trials, args.results):
        print(folder)
    return 0


if __name__ == "__main__":
    run_cli(main)
