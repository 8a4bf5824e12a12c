"""`skinr1` command line: `demo` materializes the whole asset graph, `diagnose` answers for one image, `doctor`
checks the environment, `bench` runs the benchmarks and writes their table."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def _dagster_home() -> Path:
    """The project-local instance when run from the project root, else one inside the pipeline home."""
    if os.environ.get("DAGSTER_HOME"):
        return Path(os.environ["DAGSTER_HOME"])
    cwd = Path.cwd()
    if (cwd / "dagster.yaml").is_file():
        return cwd
    from skinr1_pipeline.settings import load_settings

    home = load_settings().home / "dagster_home"
    home.mkdir(parents=True, exist_ok=True)
    return home


def cmd_demo(args: argparse.Namespace) -> int:
    os.environ["DAGSTER_HOME"] = str(_dagster_home())
    import dagster as dg

    from skinr1_pipeline.definitions import build_definitions
    from skinr1_pipeline.runner import materialize_all
    from skinr1_pipeline.settings import load_settings

    settings = load_settings()
    defs = build_definitions(settings)
    print(f"profile={settings.profile} home={settings.home} dagster_home={os.environ['DAGSTER_HOME']}")
    with dg.DagsterInstance.get() as instance:
        outcome = materialize_all(
            defs, instance, run_config={"loggers": {"console": {"config": {"log_level": args.log_level}}}}
        )
    # A failed WARN check (e.g. near-duplicates across splits) is a finding to read, not a failed run.
    failed_checks = [
        e for e in outcome.check_evaluations() if not e.passed and e.severity == dg.AssetCheckSeverity.ERROR
    ]
    print(
        f"\n{'SUCCESS' if outcome.success else 'FAILED'}: {len(outcome.materialized_keys())} assets "
        f"in {outcome.seconds:.1f}s"
    )
    _print_stage_shares(outcome)
    from skinr1_pipeline.storage.atomic import write_json

    # For benchmarks/demo_seeds.py and anyone comparing machines: the whole run's and each step's wall time.
    write_json(
        settings.home / "demo_timing.json",
        {
            "success": outcome.success,
            "seconds": round(outcome.seconds, 1),
            "steps": {name: round(sec, 1) for name, sec in outcome.step_seconds.items()},
        },
    )
    for evaluation in outcome.check_evaluations():
        verdict = (
            "passed"
            if evaluation.passed
            else "FAILED"
            if evaluation.severity == dg.AssetCheckSeverity.ERROR
            else "warning (see the check's metadata)"
        )
        print(f"  check {evaluation.asset_key.to_user_string()}:{evaluation.check_name} -> {verdict}")
    from skinr1_pipeline.storage.run_folders import latest_complete

    # Each asset writes its own run folder; `latest_complete` is the newest one a run finished.
    reports, tables = (
        latest_complete(settings.outputs_dir / name) for name in ("evaluation_reports", "ablation_table")
    )
    report = reports / "report" / "report.html" if reports else None
    table = tables / "ablation_table.csv" if tables else None
    likelihood = tables / "answer_likelihood_table.csv" if tables else None
    if table is not None and table.exists():
        import pandas as pd

        shown = pd.read_csv(table, index_col=0)
        print("\nAblation table (accuracy [95% CI]):")
        print(shown[[c for c in shown.columns if " [" in str(shown[c].iloc[0])]].to_string())
        if likelihood.exists():
            print(
                "\nAnswer-likelihood accuracy [95% CI] (the offered answer the model finds most probable after its "
                "reasoning):"
            )
            print(pd.read_csv(likelihood, index_col=0).to_string())
        _print_honesty_tables(tables)
    print("\nWhere to look:")
    if report is not None and report.exists():
        print(f"  evaluation report:        {report}")
    print(f"  asset outputs (Parquet):  {settings.outputs_dir}")
    print(
        f"  Dagster UI:               make ui   "
        f"(DAGSTER_HOME={os.environ['DAGSTER_HOME']} dagster dev -w workspace.yaml)"
    )
    print(f"  MLflow UI:                mlflow ui --backend-store-uri {settings.mlflow_tracking_uri}")
    return 0 if outcome.success and not failed_checks else 1


def _print_stage_shares(outcome) -> None:
    """Where the demo's time went, per asset step, longest first (the rest folded into one line)."""
    from skinr1_pipeline.runner import stage_shares

    rows = stage_shares(outcome.step_seconds, outcome.seconds)
    shown, rest = rows[:-1][:8], rows[:-1][8:]
    print("\nTime by stage (wall seconds, share of the whole run):")
    for name, seconds, share in shown:
        print(f"  {seconds:8.1f}s {share:6.1%}  {name}")
    if rest:
        print(f"  {sum(r[1] for r in rest):8.1f}s {sum(r[2] for r in rest):6.1%}  ({len(rest)} shorter steps)")
    print(f"  {rows[-1][1]:8.1f}s {rows[-1][2]:6.1%}  {rows[-1][0]}")


def _print_honesty_tables(evaluation_dir: Path) -> None:
    """The tables that say whether the numbers above are about the image: the best image-blind guesser per suite,
    each variant against it and against its own shuffled-image control (paired), whether an image-only reference
    finds signal in each suite, and the paper's claims."""
    import pandas as pd

    def read(name: str) -> pd.DataFrame:
        path = evaluation_dir / f"{name}.csv"
        try:
            return pd.read_csv(path) if path.exists() else pd.DataFrame()
        except pd.errors.EmptyDataError:
            return pd.DataFrame()

    baselines, blind, image, claims, reference = (
        read(n) for n in ("image_blind_baselines", "versus_blind", "image_use", "paired_claims", "image_only_reference")
    )
    if len(baselines):
        print("\nBest image-blind guesser per suite (expected accuracy; chance = uniform):")
        print(baselines[["suite", "n", "chance", "best", "best_guesser"]].round(3).to_string(index=False))
    if len(blind) and "difference" in blind:
        cells = blind.assign(
            cell=[
                f"{d:+.2f} [{lo:+.2f}, {hi:+.2f}]" if d == d else v
                for d, lo, hi, v in zip(blind["difference"], blind["ci_low"], blind["ci_high"], blind["verdict"])
            ]
        )
        print("\nAccuracy minus the best blind guesser, paired on the same items [95% CI]:")
        print(cells.pivot(index="variant", columns="suite", values="cell").to_string())
    if len(image):
        print("\nDoes a variant read the image? real vs shuffled vs blank image, paired:")
        rows = image.assign(
            real_minus_shuffled=[
                f"{d:+.2f} [{lo:+.2f}, {hi:+.2f}]"
                for d, lo, hi in zip(image["real_minus_shuffled"], image["shuffled_ci_low"], image["shuffled_ci_high"])
            ]
        )
        print(
            rows[["variant", "suite", "n", "real", "shuffled", "blank", "real_minus_shuffled", "verdict"]]
            .round(3)
            .to_string(index=False)
        )
    if len(reference) and "difference" in reference:
        print(
            "\nIs there image signal the train split teaches? A colour-statistics classifier of the train images "
            "(no text) against the best blind guesser, paired:"
        )
        rows = reference.assign(
            minus_best_blind=[
                f"{d:+.2f} [{lo:+.2f}, {hi:+.2f}]"
                for d, lo, hi in zip(reference["difference"], reference["ci_low"], reference["ci_high"])
            ]
        )
        print(
            rows[["suite", "n", "accuracy", "best_blind", "minus_best_blind", "verdict"]]
            .round(3)
            .to_string(index=False)
        )
    if len(claims) and "holm_p" in claims:
        print("\nThe paper's claims, paired (exact McNemar, Holm-adjusted):")
        print(claims[["claim", "suite", "difference", "holm_p", "verdict"]].round(4).to_string(index=False))


def cmd_doctor(args: argparse.Namespace) -> int:
    from skinr1_pipeline.doctor import check_gpu, check_libraries, detect_profile, report, verification

    profile = detect_profile()
    findings = [verification(profile), *check_libraries(profile=profile), *check_gpu()]
    print(report(findings))
    return 0 if all(f.ok for f in findings) else 1


def cmd_diagnose(args: argparse.Namespace) -> int:
    from skinr1_pipeline.diagnose import DiagnoseError, diagnose, render, resolve_model
    from skinr1_pipeline.modeling.model_factory import ModelDirError
    from skinr1_pipeline.settings import load_settings

    try:
        source = resolve_model(args.model, load_settings(), base_dir=args.base)
        report = diagnose(args.image, source, max_new_tokens=args.max_new_tokens)
    except (DiagnoseError, ModelDirError) as exc:
        print(f"skinr1 diagnose: {exc}", file=sys.stderr)
        return 2
    if args.json:
        import json

        print(json.dumps(report.as_dict(), indent=2))
    else:
        print(render(report))
    return 0 if report.format_ok and report.node else 1


def cmd_bench(args: argparse.Namespace) -> int:
    import subprocess

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "run_all.py"
    if not script.is_file():
        print(
            f"skinr1 bench: {script} not found; the benchmarks ship with the source checkout (pip install -e .)",
            file=sys.stderr,
        )
        return 2
    extra = [
        *(["--quick"] if args.quick else []),
        *(["--only", *args.only] if args.only else []),
        *(["--out", args.out] if args.out else []),
    ]
    return subprocess.call([sys.executable, str(script), *extra])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="skinr1", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="materialize the whole asset graph on the active profile (demo by default)")
    demo.add_argument(
        "--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"], help="Dagster console log level"
    )
    demo.set_defaults(func=cmd_demo)
    sub.add_parser(
        "doctor", help="install profile, library versions against what it was verified with, and the GPU"
    ).set_defaults(func=cmd_doctor)
    diag = sub.add_parser("diagnose", help="rationale, diagnosis, taxonomy path, bucket and excluded DDx for one image")
    diag.add_argument("image", help="a skin image (JPEG, PNG, ...)")
    diag.add_argument(
        "--model",
        default=None,
        help="model or adapter directory, registry alias (champion, candidate, previous_champion) or "
        "models:/name@alias; default: the newest adapter trained in this pipeline home (GRPO, "
        "else SFT)",
    )
    diag.add_argument("--base", default=None, help="base model directory for an adapter (default: the pipeline's)")
    diag.add_argument("--max-new-tokens", type=int, default=512)
    diag.add_argument("--json", action="store_true", help="print the result as JSON")
    diag.set_defaults(func=cmd_diagnose)
    bench = sub.add_parser(
        "bench", help="run every benchmark and write the Markdown table of ratios (benchmarks/RESULTS.md)"
    )
    bench.add_argument("--quick", action="store_true", help="smaller workloads")
    bench.add_argument("--only", nargs="+", choices=["ingest", "generation", "evaluation", "image_memory"])
    bench.add_argument("--out", help="Markdown file to write (default: benchmarks/RESULTS.md)")
    bench.set_defaults(func=cmd_bench)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
