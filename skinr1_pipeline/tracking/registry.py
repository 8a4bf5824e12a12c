"""Model registry with aliases: every trained adapter becomes a `candidate`; only a measurably better one `champion`.

Why aliases and not stages: stages are deprecated since MLflow 2.9 (anchors §D). Why a rule in code: promotion is a
decision a reviewer must be able to replay, so it is a pure comparison of one named metric between the candidate
and the current champion, with a minimum improvement; ties keep the champion, because replacing a validated model
with an equally good unvalidated one only adds risk. The previous champion keeps the `previous_champion` alias so a
rollback is one alias move.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import mlflow
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

CANDIDATE, CHAMPION, PREVIOUS_CHAMPION = "candidate", "champion", "previous_champion"
DEFAULT_METRIC = "in_domain_accuracy"


@dataclass(frozen=True)
class Decision:
    promote: bool
    reason: str
    metric: str
    candidate_version: str
    candidate_value: float | None
    champion_version: str | None
    champion_value: float | None
    min_delta: float
    higher_is_better: bool

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def register_candidate(
    model_uri: str, name: str, *, tags: Mapping[str, Any] | None = None, tracking_uri: str | None = None
) -> str:
    """Register `model_uri` (runs:/…, models:/<model_id>, or a local path) under `name` and alias it `candidate`.

    Put the decision metric in `tags` (e.g. {"in_domain_accuracy": "0.64", "stage": "rl"}) so the registry carries
    the number the promotion compares, even if the source run is deleted later. `tracking_uri`, when given, becomes
    the process's tracking URI (the convention of `tracking.mlflow_runs.nested_run`): `mlflow.register_model`, the
    only public call that resolves runs:/ and models:/<model_id> sources, reads the global URI. The registry follows
    the tracking URI unless MLFLOW_REGISTRY_URI / `mlflow.set_registry_uri` says otherwise.
    """
    if tracking_uri is not None:
        mlflow.set_tracking_uri(tracking_uri)
    str_tags = {k: str(v) for k, v in (tags or {}).items()}
    mv = mlflow.register_model(model_uri, name, tags=str_tags)
    MlflowClient(tracking_uri=mlflow.get_tracking_uri()).set_registered_model_alias(name, CANDIDATE, mv.version)
    return str(mv.version)


def _alias_version(client: MlflowClient, name: str, alias: str):
    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException as exc:
        if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"):
            return None
        raise


def _as_float(value: Any) -> float | None:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(out) else out


def version_metric(client: MlflowClient, mv, metric: str) -> tuple[float | None, str]:
    """The version's `metric`: its tag first, then its logged model's metrics, then its source run's metrics."""
    value = _as_float((mv.tags or {}).get(metric))
    if value is not None:
        return value, "version tag"
    for m in getattr(mv, "metrics", None) or []:
        if m.key == metric and _as_float(m.value) is not None:
            return float(m.value), "logged model metric"
    if mv.run_id:
        try:
            value = _as_float(client.get_run(mv.run_id).data.metrics.get(metric))
        except MlflowException:
            value = None
        if value is not None:
            return value, f"source run {mv.run_id}"
    return None, "not found (no version tag, logged-model metric or source-run metric)"


def promotion_decision(
    client: MlflowClient,
    name: str,
    candidate_version: str | int,
    metric: str = DEFAULT_METRIC,
    *,
    min_delta: float = 0.0,
    higher_is_better: bool = True,
    required_tags: Sequence[str] = (),
) -> Decision:
    """Promote when there is no champion, or the candidate beats it by more than `min_delta`; ties keep it.

    A candidate without the metric is never promoted; a champion without it is not replaced automatically either
    (a person must decide), and the reason says so. Every tag in `required_tags` must read "true" on the candidate
    (e.g. evidence that it beats image-blind guessing and its shuffled-image control): a higher accuracy that an
    option-list reader could also reach is no reason to promote.
    """
    candidate = client.get_model_version(name, str(candidate_version))
    cand_value, cand_source = version_metric(client, candidate, metric)
    champion = _alias_version(client, name, CHAMPION)
    common = {
        "metric": metric,
        "candidate_version": str(candidate.version),
        "candidate_value": cand_value,
        "min_delta": float(min_delta),
        "higher_is_better": higher_is_better,
    }
    if champion is not None and str(champion.version) == str(candidate.version):
        return Decision(
            False,
            "the candidate already is the champion",
            champion_version=str(champion.version),
            champion_value=cand_value,
            **common,
        )
    unmet = [t for t in required_tags if str((candidate.tags or {}).get(t, "")).strip().lower() != "true"]
    if unmet:
        found = {t: (candidate.tags or {}).get(t, "missing") for t in unmet}
        return Decision(
            False,
            f"candidate v{candidate.version} lacks required evidence: {found}",
            champion_version=str(champion.version) if champion else None,
            champion_value=None,
            **common,
        )
    if cand_value is None:
        return Decision(
            False,
            f"candidate v{candidate.version} has no {metric}: {cand_source}",
            champion_version=str(champion.version) if champion else None,
            champion_value=None,
            **common,
        )
    if champion is None:
        return Decision(
            True,
            f"no champion yet; candidate {metric}={cand_value:.4f} ({cand_source})",
            champion_version=None,
            champion_value=None,
            **common,
        )
    champ_value, champ_source = version_metric(client, champion, metric)
    if champ_value is None:
        return Decision(
            False,
            f"champion v{champion.version} has no {metric} ({champ_source}); not replaced automatically",
            champion_version=str(champion.version),
            champion_value=None,
            **common,
        )
    gain = (cand_value - champ_value) if higher_is_better else (champ_value - cand_value)
    better = gain > min_delta
    verdict = "better" if better else ("tied" if gain == 0 else "not better by more than min_delta")
    return Decision(
        better,
        f"candidate {metric}={cand_value:.4f} vs champion v{champion.version} "
        f"{champ_value:.4f}: {verdict} (gain {gain:+.4f}, min_delta {min_delta})",
        champion_version=str(champion.version),
        champion_value=champ_value,
        **common,
    )


def promote(client: MlflowClient, name: str, version: str | int) -> None:
    """Alias `version` as champion; the replaced champion becomes `previous_champion` (for rollback)."""
    current = _alias_version(client, name, CHAMPION)
    if current is not None and str(current.version) != str(version):
        client.set_registered_model_alias(name, PREVIOUS_CHAMPION, str(current.version))
    client.set_registered_model_alias(name, CHAMPION, str(version))


def decide_and_promote(
    client: MlflowClient,
    name: str,
    candidate_version: str | int,
    metric: str = DEFAULT_METRIC,
    *,
    min_delta: float = 0.0,
    higher_is_better: bool = True,
    required_tags: Sequence[str] = (),
) -> Decision:
    """`promotion_decision`, then `promote` when it says so; the decision is written to the version's tags."""
    decision = promotion_decision(
        client,
        name,
        candidate_version,
        metric,
        min_delta=min_delta,
        higher_is_better=higher_is_better,
        required_tags=required_tags,
    )
    client.set_model_version_tag(
        name, str(candidate_version), "promotion_decision", "promoted" if decision.promote else "kept champion"
    )
    client.set_model_version_tag(name, str(candidate_version), "promotion_reason", decision.reason[:5000])
    if decision.promote:
        promote(client, name, candidate_version)
    return decision
