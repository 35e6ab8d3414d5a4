#!/usr/bin/env python3
"""Offline checks of deploy/, exiting non-zero and naming each problem:

- every overlay renders (kubectl kustomize); every rendered object validates against the
  Kubernetes schemas (kubernetes-validate, strict); no cluster-wide RBAC, no committed Secret,
  and each Role grants exactly what its job needs (ROLES);
- every rendered WorkflowTemplate, and every Workflow object the argo-adapter sends
  (argo-crds/samples/, pinned by tests/tests/workflow_objects.rs), validates against Argo's own
  CRDs (argo-crds/, Argo Workflows v4.1.2), including fields the API server would silently drop;
- per overlay, from the configuration it renders (the ConfigMap, then each Deployment's
  environment, as the processes load it): every WorkflowTemplate that a run can name exists in
  the namespace the run goes to; each of its parameters without a default is always supplied;
  the argo-adapter serves every namespace the server dispatches to (its `argo.namespaces` and
  its Role there); the service account each Workflow runs as exists there with Argo's executor
  minimum (workflowtaskresults create and patch); the argo-adapter may read pod logs exactly in
  the namespaces where a command has `show_logs` (components/pod-logs).
"""
import json, pathlib, re, subprocess, sys
import jsonschema
import yaml
import kubernetes_validate

ROOT = pathlib.Path(__file__).resolve().parent
REPO = ROOT.parent
K8S = "1.34.0"
# What each Role may grant, by name: the argo-adapter's, and Argo's executor minimum.
ROLES = {
    "facteur-argo": {("argoproj.io", "workflows"): {"create", "get", "list", "watch", "patch", "update"},
                     ("argoproj.io", "workflowtemplates"): {"get", "list", "watch"}},
    "facteur-workflow-executor": {("argoproj.io", "workflowtaskresults"): {"create", "patch"}},
    # components/pod-logs: only where a command has show_logs (checked per overlay).
    "facteur-argo-logs": {("", "pods/log"): {"get"}},
}
EXECUTOR = ("argoproj.io", "workflowtaskresults", {"create", "patch"})
CRD_REQUIRED = {
    "PrometheusRule": [("spec", "groups")],
    "Service/serving.knative.dev/v1": [("spec", "template", "spec", "containers")],
    "Application": [("spec", "source", "repoURL"), ("spec", "source", "path"), ("spec", "destination", "namespace")],
}
# Parameters a Codex run always carries (server/src/domain/codex.rs `plan`); `repository`,
# `issue_number` and `judge_prompt` only when the task (or configuration) has them.
CODEX_ALWAYS = {"head", "base", "prompt", "implementation_iterations", "iteration_cycle",
                "rawEvent", "eventBody"}
# Environment names that do not follow FACTEUR_<PATH> (config/src/load.rs ENV_ALIASES).
ENV_ALIASES = {
    "FACTEUR_KUBECONFIG": "argo.kubeconfig",
    "FACTEUR_DISABLE_DISPATCHER": "dispatcher.disabled",
    "FACTEUR_CODEX_ENABLE_IMPLEMENTATION_ORCHESTRATION": "codex_implementation_orchestrator.enabled",
    "FACTEUR_LOG_FORMAT": "telemetry.log_format",
    "FACTEUR_LOG_LEVEL": "telemetry.log_level",
}
# The metrics the server exports (server/src/metrics.rs), and the runbook's headings.
METRICS = set(re.findall(r'=> "(facteur_[a-z_]+)"', (REPO / "server/src/metrics.rs").read_text()))
ANCHORS = {re.sub(r"[^a-z0-9 -]", "", h.lower()).replace(" ", "-")
           for h in re.findall(r"^#+ (.+)$|^\*\*(.+?)\*\*", (REPO / "docs/operations.md").read_text(), re.M)
           for h in h if h}
problems = []


def check_metrics(text, label):
    """Every facteur_* series an expression names is one the server exports."""
    for name in set(re.findall(r"\bfacteur_[a-z_]+", text)):
        base = re.sub(r"_(bucket|sum|count)$", "", name)
        if name not in METRICS and base not in METRICS:
            problems.append(f"{label}: `{name}` is not a metric the server exports")


def dig(obj, path):
    for key in path:
        if not isinstance(obj, dict) or key not in obj:
            return None
        obj = obj[key]
    return obj


def crd_schema(file):
    crd = yaml.safe_load((ROOT / "argo-crds" / file).read_text())
    version = next(v for v in crd["spec"]["versions"] if v.get("storage"))
    return version["schema"]["openAPIV3Schema"]


ARGO = {"Workflow": crd_schema("argoproj.io_workflows.yaml"),
        "WorkflowTemplate": crd_schema("argoproj.io_workflowtemplates.yaml")}


def pruned(obj, schema, path, out):
    """Fields a structural schema does not declare: the API server drops them without a word."""
    if schema.get("x-kubernetes-preserve-unknown-fields"):
        return
    if isinstance(obj, dict):
        props, extra = schema.get("properties"), schema.get("additionalProperties")
        for k, v in obj.items():
            if props is not None and k in props:
                pruned(v, props[k], path + [k], out)
            elif isinstance(extra, dict):
                pruned(v, extra, path + [k], out)
            elif props is not None and extra is None:
                out.append(".".join(path + [k]))
    elif isinstance(obj, list) and isinstance(schema.get("items"), dict):
        for i, v in enumerate(obj):
            pruned(v, schema["items"], path + [str(i)], out)


def check_argo(obj, label):
    schema = ARGO[obj["kind"]]
    for e in jsonschema.Draft7Validator(schema).iter_errors(obj):
        problems.append(f"{label}: Argo's CRD refuses it: {e.message} at {'.'.join(str(p) for p in e.path)}")
    dropped = []
    pruned(obj, schema, [], dropped)
    for d in dropped:
        problems.append(f"{label}: `{d}` is not in Argo's CRD (the API server would drop it)")


def check(obj, where):
    kind, api = obj.get("kind"), obj.get("apiVersion", "")
    name = dig(obj, ("metadata", "name"))
    label = f"{where}: {kind}/{name}"
    if kind in ("ClusterRole", "ClusterRoleBinding"):
        problems.append(f"{label}: no cluster-wide RBAC allowed")
    if kind == "Secret":
        problems.append(f"{label}: Secrets are referenced by name, never committed")
    if kind == "Role":
        allowed = ROLES.get(name)
        if allowed is None:
            problems.append(f"{label}: unknown Role (known: {', '.join(sorted(ROLES))})")
            allowed = {}
        for rule in obj.get("rules", []):
            for group in rule.get("apiGroups", []):
                for res in rule.get("resources", []):
                    extra = set(rule.get("verbs", [])) - allowed.get((group, res), set())
                    if extra:
                        problems.append(f"{label}: grants {sorted(extra)} on {group}/{res}")
    if api.startswith("argoproj.io/") and kind in ARGO:
        check_argo(obj, label)
        return
    if kind == "PrometheusRule":
        for g in dig(obj, ("spec", "groups")) or []:
            for r in g.get("rules", []):
                check_metrics(r.get("expr", ""), f"{label}: {r.get('alert')}")
                anchor = dig(r, ("annotations", "runbook_url")) or ""
                if "#" not in anchor or anchor.split("#", 1)[1] not in ANCHORS:
                    problems.append(f"{label}: {r.get('alert')}: runbook_url `{anchor}` names no section of docs/operations.md")
    if kind == "ConfigMap" and any(k.endswith(".json") for k in (obj.get("data") or {})):
        for k, v in obj["data"].items():
            check_metrics(v, f"{label}: {k}")
    crd = CRD_REQUIRED.get(kind) or CRD_REQUIRED.get(f"{kind}/{api}")
    if crd is not None:
        for path in crd:
            if dig(obj, path) is None:
                problems.append(f"{label}: missing {'.'.join(path)}")
        return
    try:
        kubernetes_validate.validate(obj, K8S, strict=True)
    except kubernetes_validate.ValidationError as e:
        problems.append(f"{label}: {e.message} at {'.'.join(str(p) for p in e.path)}")
    except Exception as e:  # unknown kind: no schema to check against
        problems.append(f"{label}: cannot validate ({e})")


# --- the configuration an overlay renders, as the processes load it -------------------------

DEFAULTS = yaml.safe_load((REPO / "config" / "example.yaml").read_text())


def env_paths(tree, prefix=""):
    """FACTEUR_<PATH> for every key of the configuration (sections are objects with keys)."""
    out = {}
    for k, v in tree.items():
        path = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(env_paths(v, path + "."))
        else:
            out["FACTEUR_" + path.upper().replace(".", "_")] = path
    return out


ENV_PATHS = {**env_paths(DEFAULTS), **ENV_ALIASES}


def merge(base, over):
    if isinstance(base, dict) and isinstance(over, dict):
        out = dict(base)
        for k, v in over.items():
            out[k] = merge(base.get(k), v)
        return out
    return over


def effective(configmap, env):
    cfg = merge(DEFAULTS, configmap or {})
    for e in env or []:
        path = ENV_PATHS.get(e.get("name", ""))
        if path is None or "value" not in e:
            continue  # a secret reference, or not configuration
        value = yaml.safe_load(e["value"]) if e["value"].strip()[:1] in "[{" else e["value"]
        node = cfg
        keys = path.split(".")
        for k in keys[:-1]:
            node = node.setdefault(k, {})
        node[keys[-1]] = value
    return cfg


def first(*values):
    return next((v for v in values if v), "")


def targets(cfg):
    """Where runs go: (what, namespace, template, service account, parameters always supplied)."""
    argo, out = cfg["argo"], []
    base = set((argo.get("parameters") or {}).keys())
    commands = cfg.get("commands") or [
        {"name": "dispatch", "options": [{"name": "payload", "required": False}]}]
    for c in commands:
        supplied = base | {o.get("parameter") or o["name"] for o in c.get("options") or []
                           if o.get("required")}
        out.append((f"command /{c['name']}", first(c.get("namespace"), argo["namespace"]),
                    first(c.get("workflow_template"), argo["workflow_template"]),
                    first(c.get("service_account"), argo.get("service_account")), supplied))
    o = cfg["codex_implementation_orchestrator"]
    if o.get("enabled"):
        supplied = CODEX_ALWAYS | set((o.get("parameters") or {}).keys())
        out.append(("Codex task (autonomous: false)", first(o.get("namespace"), argo["namespace"]),
                    o["workflow_template"],
                    first(o.get("service_account"), argo.get("service_account")), supplied))
        out.append(("Codex task (autonomous)",
                    first(o.get("autonomous_namespace"), o.get("namespace"), argo["namespace"], "jangar"),
                    o["autonomous_workflow_template"],
                    first(o.get("autonomous_service_account"), o.get("service_account"),
                          argo.get("service_account")), supplied))
    return out


def container_env(docs, kind, name):
    for d in docs:
        if d.get("kind") == kind and dig(d, ("metadata", "name")) == name:
            spec = dig(d, ("spec", "template", "spec")) or {}
            return (spec.get("containers") or [{}])[0].get("env") or []
    return None


def grants(role, group, resource, verbs):
    return role is not None and any(
        group in r.get("apiGroups", []) and resource in r.get("resources", [])
        and verbs <= set(r.get("verbs", [])) for r in role.get("rules", []))


def bound(docs, ns, sa, sa_ns, group, resource, verbs):
    """Whether service account `sa` (of namespace `sa_ns`) holds those verbs in `ns`."""
    roles = {dig(d, ("metadata", "name")): d for d in docs
             if d.get("kind") == "Role" and dig(d, ("metadata", "namespace")) == ns}
    for b in docs:
        if b.get("kind") != "RoleBinding" or dig(b, ("metadata", "namespace")) != ns:
            continue
        subjects = b.get("subjects") or []
        if any(s.get("kind") == "ServiceAccount" and s.get("name") == sa
               and s.get("namespace", ns) == sa_ns for s in subjects):
            if grants(roles.get(dig(b, ("roleRef", "name"))), group, resource, verbs):
                return True
    return False


def cross_check(overlay, docs):
    cm = next((d for d in docs if d.get("kind") == "ConfigMap"
               and dig(d, ("metadata", "name", )) and d["metadata"]["name"].startswith("facteur-config")), None)
    if cm is None:
        problems.append(f"{overlay}: no facteur-config ConfigMap rendered")
        return
    app_ns = cm["metadata"].get("namespace", "")
    configmap = yaml.safe_load(cm["data"]["facteur.yaml"])
    server_env = container_env(docs, "Deployment", "facteur")
    if server_env is None:  # the knative overlay
        server_env = next((((dig(d, ("spec", "template", "spec", "containers")) or [{}])[0]).get("env") or []
                           for d in docs if d.get("kind") == "Service"
                           and d.get("apiVersion", "").startswith("serving.knative.dev")), [])
    server, adapter = effective(configmap, server_env), effective(configmap,
                                                                  container_env(docs, "Deployment", "facteur-argo"))
    templates = {(dig(d, ("metadata", "namespace")), dig(d, ("metadata", "name"))): d
                 for d in docs if d.get("kind") == "WorkflowTemplate"}
    accounts = {(dig(d, ("metadata", "namespace")), dig(d, ("metadata", "name")))
                for d in docs if d.get("kind") == "ServiceAccount"}
    narrowing = adapter["argo"].get("namespaces") or []
    for what, ns, tpl, sa, supplied in targets(server):
        where = f"{overlay}: {what} runs `{tpl}` in `{ns}`"
        if narrowing and ns not in narrowing:
            problems.append(f"{where}: the argo-adapter does not serve `{ns}` (its argo.namespaces: {narrowing})")
        if not bound(docs, ns, "facteur-argo", app_ns, "argoproj.io", "workflows", {"create", "watch"}):
            problems.append(f"{where}: the argo-adapter has no Role there to create and watch Workflows")
        t = templates.get((ns, tpl))
        if t is None:
            problems.append(f"{where}: no WorkflowTemplate `{tpl}` is rendered in `{ns}`")
            continue
        for p in dig(t, ("spec", "arguments", "parameters")) or []:
            has_default = any(k in p for k in ("value", "default", "valueFrom"))
            if not has_default and p["name"] not in supplied:
                problems.append(f"{where}: parameter `{p['name']}` has no default and is not always supplied")
        account = sa or dig(t, ("spec", "serviceAccountName")) or "default"
        if account != "default" and (ns, account) not in accounts:
            problems.append(f"{where}: its service account `{account}` is not rendered in `{ns}`")
        group, resource, verbs = EXECUTOR
        if not bound(docs, ns, account, ns, group, resource, verbs):
            problems.append(f"{where}: service account `{account}` lacks Argo's executor minimum "
                            f"({resource} {sorted(verbs)})")
    # Pod logs exactly where a command asks for them (show_logs), nowhere else.
    argo = server["argo"]
    wanted = {first(c.get("namespace"), argo["namespace"])
              for c in server.get("commands") or [] if c.get("show_logs")}
    namespaces = {dig(d, ("metadata", "namespace")) for d in docs if d.get("kind") == "Role"}
    granted = {ns for ns in namespaces
               if bound(docs, ns, "facteur-argo", app_ns, "", "pods/log", {"get"})}
    for ns in sorted(wanted - granted):
        problems.append(f"{overlay}: a command with show_logs runs in `{ns}`, but the argo-adapter "
                        f"may not read pod logs there (components/pod-logs)")
    for ns in sorted(granted - wanted):
        problems.append(f"{overlay}: the argo-adapter may read pod logs in `{ns}`, but no command "
                        f"there has show_logs")


overlays = sorted(p for p in (ROOT / "kubernetes" / "overlays").iterdir() if p.is_dir())
for overlay in overlays:
    out = subprocess.run(["kubectl", "kustomize", str(overlay)], capture_output=True, text=True)
    if out.returncode != 0:
        problems.append(f"{overlay.name}: kubectl kustomize failed: {out.stderr.strip()}")
        continue
    docs = [d for d in yaml.safe_load_all(out.stdout) if d]
    for d in docs:
        check(d, overlay.name)
    cross_check(overlay.name, docs)
    print(f"{overlay.name}: {len(docs)} objects rendered and checked")
for app in sorted((ROOT / "kubernetes" / "argocd").glob("*.yaml")):
    for d in yaml.safe_load_all(app.read_text()):
        if d:
            check(d, f"argocd/{app.name}")
            path = REPO / dig(d, ("spec", "source", "path"))
            if not path.is_dir():
                problems.append(f"argocd/{app.name}: source path {path} does not exist")
samples = ROOT / "argo-crds" / "samples"
workflows = sorted(p for p in samples.glob("*.json") if p.name != "cancel-patch.json")
if not workflows:
    problems.append(f"{samples}: no Workflow samples (tests/tests/workflow_objects.rs writes them)")
for p in workflows:
    check_argo(json.loads(p.read_text()), f"samples/{p.name}")
    patched = merge(json.loads(p.read_text()), json.loads((samples / "cancel-patch.json").read_text()))
    check_argo(patched, f"samples/{p.name} after the cancel patch")
print(f"argo-crds/samples: {len(workflows)} Workflow objects checked against Argo's CRD")
for p in problems:
    print("PROBLEM", p, file=sys.stderr)
sys.exit(1 if problems else 0)
