"""Every label key the operator writes or selects on, in one place (values unchanged: goldens and running
clusters select on them)."""

from __future__ import annotations

from kubetune.api import GROUP

NAME = "app.kubernetes.io/name"
COMPONENT = "app.kubernetes.io/component"
MANAGED_BY = "app.kubernetes.io/managed-by"
MANAGER = "kubetune-operator"
MANAGED = {MANAGED_BY: MANAGER}
ATTEMPT = f"{GROUP}/attempt"  # a FineTuneJob's pods: which whole-gang attempt they belong to  # what the operator's watches on Jobs and Deployments select


def owner(kind: str) -> str:
    """`kubetune.io/<kind>`: the parent's name on each of its children."""
    return f"{GROUP}/{kind.lower()}"


def of(kind: str, name: str, component: str) -> dict[str, str]:
    # No app.kubernetes.io/instance: Argo CD tracks its applications' objects by that label, and a child carrying
    # it would be taken for (and pruned as) an object of the Argo application of that name.
    return {NAME: "kubetune", COMPONENT: component, MANAGED_BY: MANAGER, owner(kind): name}


def parent_of_job(labels: dict[str, str]) -> str | None:
    """Which kind a batch Job the operator made belongs to: a FineTuneJob's trainer gang or a ConvertJob's pod."""
    if owner("FineTuneJob") in labels and labels.get(COMPONENT) == "trainer":
        return "FineTuneJob"
    return "ConvertJob" if owner("ConvertJob") in labels else None


def selector(kind: str, name: str, component: str) -> dict[str, str]:
    return {owner(kind): name, COMPONENT: component}
