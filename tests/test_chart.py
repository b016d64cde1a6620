"""The Helm chart: lint and render for the default values and every example values file, bad values rejected by
values.schema.json, and every rendered manifest accepted by the real test apiserver (server-side dry-run, with the
Prometheus Operator's CRDs installed for the monitoring objects). The RBAC is checked against the operator's real
requests in test_operator.py."""

from __future__ import annotations

import subprocess

import pytest
import yaml

from .controlplane.cluster import BIN, ROOT

CHART = ROOT / "charts" / "kubetune"
MONITORING_CRDS = str((BIN / "monitoring-crds").resolve())  # kubectl reads a symlinked directory as a file
EXAMPLES = sorted((ROOT / "examples" / "helm").glob("*.yaml"))
MONITORING = ["--set", "monitoring.serviceMonitor.enabled=true", "--set", "monitoring.podMonitor.enabled=true",
              "--set", "monitoring.prometheusRule.enabled=true", "--set", "dashboards.enabled=true"]
VALUE_SETS = {"default": [], "monitoring-forced": ["--set", "monitoring.force=true", *MONITORING],
              **{f"example-{p.stem}": ["-f", str(p), "--api-versions", "monitoring.coreos.com/v1"] for p in EXAMPLES}}


def helm(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(BIN / "helm"), *args], capture_output=True, text=True, timeout=120)
    if check and proc.returncode:
        raise AssertionError(f"helm {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc


def render(*args: str, namespace: str = "kubetune-system") -> list[dict]:
    out = helm("template", "kubetune", str(CHART), "-n", namespace, *args).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def kinds(docs: list[dict]) -> set[str]:
    return {d["kind"] for d in docs}


def test_there_are_example_values_files():
    assert {p.stem for p in EXAMPLES} >= {"monitoring", "single-namespace", "gitops", "minio-storage"}


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_helm_lint(name):
    out = helm("lint", "--strict", str(CHART), *[a for a in VALUE_SETS[name] if a != "--api-versions"
                                                and not a.startswith("monitoring.coreos")]).stdout
    assert "0 chart(s) failed" in out


def test_default_render():
    docs = render()
    assert kinds(docs) == {"ServiceAccount", "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition",
                           "Deployment", "Service", "ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding"}
    deploy = next(d for d in docs if d["kind"] == "Deployment")
    assert deploy["spec"]["replicas"] == 1 and deploy["spec"]["strategy"] == {"type": "Recreate"}
    pod = deploy["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert pod["securityContext"]["runAsNonRoot"] and container["securityContext"]["readOnlyRootFilesystem"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["KUBETUNE_RUNTIME_IMAGE"] == "ghcr.io/kubetune/kubetune-runtime:0.1.0"
    assert "KUBETUNE_NAMESPACE" not in env  # all namespaces
    crds = {d["metadata"]["name"]: d for d in docs if d["kind"] == "CustomResourceDefinition"}
    for path in (ROOT / "crds").glob("*.yaml"):
        committed = yaml.safe_load(path.read_text())
        chart_copy = crds[committed["metadata"]["name"]]
        assert chart_copy["metadata"].pop("annotations") == {"helm.sh/resource-policy": "keep"}
        assert chart_copy == committed


def test_monitoring_renders_only_when_forced_without_the_api():
    asked = render(*MONITORING)
    assert not kinds(asked) & {"ServiceMonitor", "PodMonitor", "PrometheusRule"}
    for extra in (["--api-versions", "monitoring.coreos.com/v1"], ["--set", "monitoring.force=true"]):
        assert kinds(render(*MONITORING, *extra)) >= {"ServiceMonitor", "PodMonitor", "PrometheusRule", "ConfigMap"}


def test_monitoring_objects_follow_the_clusters_api(control_plane):
    """Against the real apiserver (helm's capability discovery): without the Prometheus Operator CRDs the objects are
    left out and the notes say why; once the CRDs exist they are rendered."""
    crds = MONITORING_CRDS

    def install() -> subprocess.CompletedProcess:
        # Its own release name, CRDs left out: helm never adopts objects another owner applied (the session's CRDs,
        # the operator test's RBAC).
        return helm("install", "ktcaps", str(CHART), "--dry-run=server", "-n", "kubetune-system",
                    "--create-namespace", f"--kubeconfig={control_plane.kubeconfig}", "--set", "crds.install=false",
                    *MONITORING)

    control_plane.kubectl("delete", "--ignore-not-found", "--wait", "-f", crds)
    without = install().stdout
    assert "kind: ServiceMonitor" not in without and "Prometheus Operator API" in without
    control_plane.kubectl("apply", "--server-side", "-f", crds)
    control_plane.kubectl("wait", "--for=condition=Established", "--timeout=60s", "-f", crds)
    with_api = install().stdout
    assert all(f"kind: {k}" in with_api for k in ("ServiceMonitor", "PodMonitor", "PrometheusRule"))
    assert "Prometheus Operator API" not in with_api


def test_gitops_values_skip_the_crds_and_single_namespace_binds_a_role():
    assert "CustomResourceDefinition" not in kinds(render("--set", "crds.install=false"))
    docs = render("--set", "operator.watchNamespace=team-a")
    binding = next(d for d in docs if d["kind"] == "RoleBinding")
    assert binding["metadata"]["namespace"] == "team-a" and binding["roleRef"]["kind"] == "ClusterRole"
    cluster_bindings = [d["roleRef"]["name"] for d in docs if d["kind"] == "ClusterRoleBinding"]
    assert cluster_bindings == ["kubetune-cluster"]  # only the CRD/namespace reads are cluster-wide


def test_rbac_has_no_wildcards_and_aggregates_into_the_default_roles():
    docs = render()
    for role in (d for d in docs if d["kind"] == "ClusterRole"):
        for rule in role["rules"]:
            for field in ("apiGroups", "resources", "verbs"):
                assert "*" not in rule[field], (role["metadata"]["name"], rule)
    labels = {d["metadata"]["name"]: d["metadata"]["labels"] for d in docs if d["kind"] == "ClusterRole"}
    assert labels["kubetune-edit"]["rbac.authorization.k8s.io/aggregate-to-edit"] == "true"
    assert labels["kubetune-view"]["rbac.authorization.k8s.io/aggregate-to-view"] == "true"


BAD_VALUES = {
    "operator.replicas=2": "/operator/replicas",
    "operator.watchNamespace=Team_A": "/operator/watchNamespace",
    "image.pullPolicy=Sometimes": "/image/pullPolicy",
    "monitoring.serviceMonitor.interval=often": "/monitoring/serviceMonitor/interval",
    "monitoring.prometheusRule.ttftQuantile=1.5": "/monitoring/prometheusRule/ttftQuantile",
    "storage.endpoint=minio:9000": "/storage/endpoint",
    "crds.instal=false": "/crds",
    "operator.metricsPort=70000": "/operator/metricsPort",
}


@pytest.mark.parametrize("setting", sorted(BAD_VALUES))
def test_bad_values_fail_at_install_naming_the_field(setting):
    proc = helm("template", "kubetune", str(CHART), "--set", setting, check=False)
    assert proc.returncode != 0
    assert BAD_VALUES[setting] in proc.stderr, proc.stderr


@pytest.fixture(scope="module")
def monitoring_api(control_plane):
    control_plane.kubectl("apply", "--server-side", "-f", MONITORING_CRDS)
    control_plane.kubectl("wait", "--for=condition=Established", "--timeout=60s", "-f", MONITORING_CRDS)
    for ns in ("kubetune-system", "monitoring", "team-a"):
        control_plane.kubectl("create", "namespace", ns, check=False)
    return control_plane


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_rendered_manifests_pass_server_side_dry_run(monitoring_api, name):
    rendered = helm("template", "kubetune", str(CHART), "-n", "kubetune-system", *VALUE_SETS[name]).stdout
    proc = monitoring_api.kubectl("apply", "--dry-run=server", "-f", "-", input=rendered, check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("(server dry run)") == len([d for d in yaml.safe_load_all(rendered) if d])


def test_the_readme_command_helm_template_into_kubectl_apply_dry_run(monitoring_api):
    """`helm template charts/kubetune | kubectl apply --dry-run=server -f -`, as written."""
    kubectl = f"{BIN / 'kubectl'} --kubeconfig={monitoring_api.kubeconfig}"
    proc = subprocess.run(f"{BIN / 'helm'} template {CHART} | {kubectl} apply --dry-run=server -f -", shell=True,
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "deployment.apps/release-name-kubetune created (server dry run)" in proc.stdout


def test_installed_roles_let_editors_create_jobs_and_viewers_only_read(cluster, monitoring_api):
    rendered = helm("template", "ktchart", str(CHART), "-n", "kubetune-system", "--set", "crds.install=false",
                    "--show-only", "templates/rbac-aggregate.yaml").stdout
    monitoring_api.kubectl("apply", "-f", "-", input=rendered)
    monitoring_api.kubectl("create", "namespace", "team-b", check=False)
    monitoring_api.kubectl("create", "rolebinding", "alice-edit", "--clusterrole=edit", "--user=alice", "-n",
                           "team-b", check=False)
    monitoring_api.kubectl("create", "rolebinding", "bob-view", "--clusterrole=view", "--user=bob", "-n", "team-b",
                           check=False)

    def can(user: str, verb: str, resource: str, *extra: str) -> bool:
        def answer() -> str:
            return monitoring_api.kubectl("auth", "can-i", verb, resource, "-n", "team-b", "--as", user, *extra,
                                          check=False).stdout.strip()
        monitoring_api.wait_for(lambda: answer() in ("yes", "no"), "can-i answers")
        return answer() == "yes"

    # The controller-manager's clusterrole-aggregation controller folds the labelled roles into edit/view.
    monitoring_api.wait_for(lambda: can("alice", "create", "finetunejobs.kubetune.io"), "edit aggregates kubetune-edit",
                            30)
    assert can("alice", "delete", "chatendpoints.kubetune.io")
    assert not can("alice", "patch", "finetunejobs.kubetune.io", "--subresource=status")
    assert can("alice", "get", "finetunejobs.kubetune.io", "--subresource=status")
    assert can("bob", "list", "finetunejobs.kubetune.io") and can("bob", "get", "convertjobs.kubetune.io")
    assert not can("bob", "create", "finetunejobs.kubetune.io")


def test_the_admission_policy_keeps_pod_powers_with_who_has_them(cluster, monitoring_api):
    """Issue 26 H5: with only the chart's kubetune-edit role (no pod creation), a FineTuneJob ran as a namespace
    admin's service account with an image of the user's choice. The chart's ValidatingAdmissionPolicy refuses it,
    and lets through whoever could have made that pod anyway."""
    ns, plane = "team-c", monitoring_api
    policy = helm("template", "ktadm", str(CHART), "-n", "kubetune-system", "--set", "crds.install=false",
                  "--set", "admission.allowedImages={registry.example.com/ml/}",
                  "--show-only", "templates/admission-policy.yaml",
                  "--show-only", "templates/rbac-aggregate.yaml").stdout
    plane.kubectl("apply", "-f", "-", input=policy)
    plane.kubectl("create", "namespace", ns, check=False)
    plane.kubectl("create", "rolebinding", "alice-kt", "--clusterrole=ktadm-kubetune-edit", "--user=alice", "-n", ns)
    plane.kubectl("create", "rolebinding", "bob-kt", "--clusterrole=ktadm-kubetune-edit", "--user=bob", "-n", ns)
    plane.kubectl("create", "role", "pods", "--verb=create", "--resource=pods", "-n", ns)
    plane.kubectl("create", "rolebinding", "bob-pods", "--role=pods", "--user=bob", "-n", ns)
    plane.kubectl("apply", "-f", "-", input=yaml.safe_dump(  # kubectl create role refuses verbs it does not know
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
         "metadata": {"name": "use-irsa", "namespace": ns},
         "rules": [{"apiGroups": [""], "resources": ["serviceaccounts"], "resourceNames": ["s3-irsa"],
                    "verbs": ["use"]}]}))
    plane.kubectl("create", "rolebinding", "alice-irsa", "--role=use-irsa", "--user=alice", "-n", ns)

    def create(user: str, name: str, storage: dict | None = None, export: dict | None = None,
               **resources: object) -> subprocess.CompletedProcess:
        doc = {"apiVersion": "kubetune.io/v1alpha1", "kind": "FineTuneJob", "metadata": {"name": name, "namespace": ns},
               "spec": {"model": {"uri": "hf://org/model"}, "dataset": {"uri": "s3://data/train.jsonl"},
                        "resources": resources, **({"storage": storage} if storage else {}),
                        **({"export": export} if export else {})}}
        return plane.kubectl("create", "--dry-run=server", "--as", user, "-f", "-", input=yaml.safe_dump(doc),
                             check=False)

    try:
        plane.wait_for(lambda: "may not run pods as service account admin" in
                       create("alice", "j", serviceAccountName="admin").stderr, "the policy to take effect", 60)
        assert "spec.resources.serviceAccountName: alice" in create("alice", "j", serviceAccountName="admin").stderr
        refused = create("alice", "j", image="evil.example.com/miner:1")
        assert refused.returncode != 0 and "spec.resources.image: alice may not run the image" in refused.stderr
        refused = create("alice", "j", volumes=[{"name": "host", "hostPath": {"path": "/"}}])
        assert refused.returncode != 0 and "spec.resources.volumes" in refused.stderr
        stolen = [{"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "admin-token", "key": "token"}}},
                  {"name": "HF_ENDPOINT", "value": "https://collector.example.com"}]
        refused = create("alice", "j", env=stolen)
        assert refused.returncode != 0 and "spec.resources.env: alice may not fill" in refused.stderr
        refused = create("alice", "j", storage={"secretRef": "admin-token"})
        assert refused.returncode != 0 and "spec.storage.secretRef: alice may not hand the Secret" in refused.stderr
        for powers in ({"hostNetwork": True}, {"capabilities": ["IPC_LOCK"]}):  # the node's network, RDMA
            refused = create("alice", "j", **powers)
            assert refused.returncode != 0 and "spec.resources: alice may not give the pods" in refused.stderr
            assert create("bob", "j", **powers).returncode == 0, powers
        # The export pods are the operator's to create: their identity is checked on the FineTuneJob.
        refused = create("alice", "j", export={"resources": {"serviceAccountName": "admin"}})
        assert refused.returncode != 0 and "spec.export.resources: alice may not set" in refused.stderr
        assert create("alice", "j", export={"resources": {"memory": "64Gi"}}).returncode == 0
        assert create("bob", "j", export={"resources": {"serviceAccountName": "admin"}}).returncode == 0
        assert create("alice", "j", env=[{"name": "NCCL_DEBUG", "value": "INFO"}]).returncode == 0
        for allowed in ({}, {"serviceAccountName": "s3-irsa"}, {"image": "registry.example.com/ml/kubetune:1"}):
            proc = create("alice", "j", **allowed)
            assert proc.returncode == 0, (allowed, proc.stderr)
        for allowed in ({"serviceAccountName": "admin"}, {"image": "evil.example.com/miner:1"},
                        {"volumes": [{"name": "scratch", "emptyDir": {}}]}, {"env": stolen}):
            proc = create("bob", "j", **allowed)  # bob may create pods: kubetune gives him nothing new
            assert proc.returncode == 0, (allowed, proc.stderr)
        assert create("bob", "j", storage={"secretRef": "admin-token"}).returncode == 0
        # An update that leaves them unchanged passes for anyone who may edit (the operator's metadata writes too).
        plane.kubectl("apply", "-f", "-", input=yaml.safe_dump(
            {"apiVersion": "kubetune.io/v1alpha1", "kind": "FineTuneJob", "metadata": {"name": "bobs", "namespace": ns},
             "spec": {"model": {"uri": "hf://org/model"}, "dataset": {"uri": "s3://data/train.jsonl"},
                      "resources": {"serviceAccountName": "admin"}}}))
        relabel = plane.kubectl("label", "--as", "alice", "-n", ns, "ftj", "bobs", "team=a", check=False)
        assert relabel.returncode == 0, relabel.stderr
        change = plane.kubectl("patch", "--as", "alice", "-n", ns, "ftj", "bobs", "--type=merge", "-p",
                               '{"spec": {"resources": {"serviceAccountName": "other"}}}', check=False)
        assert change.returncode != 0 and "may not run pods as service account other" in change.stderr
    finally:
        plane.kubectl("delete", "-n", ns, "ftj", "bobs", "--ignore-not-found", check=False)
        plane.kubectl("delete", "validatingadmissionpolicybinding,validatingadmissionpolicy",
                      "ktadm-kubetune-pod-powers", "--ignore-not-found", check=False)
