#!/usr/bin/env python3
"""Offline checks of deploy/: every overlay renders (kubectl kustomize), every rendered object
validates against the Kubernetes schemas (kubernetes-validate, strict), custom resources have
their required fields, no Role grants more than the argo-adapter needs, nothing cluster-wide,
and no Secret is committed. Exits non-zero naming each problem."""
import pathlib, subprocess, sys
import yaml
import kubernetes_validate

ROOT = pathlib.Path(__file__).resolve().parent
K8S = "1.34.0"
ALLOWED = {("argoproj.io", "workflows"): {"create", "get", "list", "watch", "patch"},
           ("argoproj.io", "workflowtemplates"): {"get", "list"}}
CRD_REQUIRED = {
    "WorkflowTemplate": [("spec", "entrypoint"), ("spec", "templates")],
    "Service/serving.knative.dev/v1": [("spec", "template", "spec", "containers")],
    "Application": [("spec", "source", "repoURL"), ("spec", "source", "path"), ("spec", "destination", "namespace")],
}
problems = []

def dig(obj, path):
    for key in path:
        if not isinstance(obj, dict) or key not in obj:
            return None
        obj = obj[key]
    return obj

def check(obj, where):
    kind, api = obj.get("kind"), obj.get("apiVersion", "")
    name = dig(obj, ("metadata", "name"))
    label = f"{where}: {kind}/{name}"
    if kind in ("ClusterRole", "ClusterRoleBinding"):
        problems.append(f"{label}: no cluster-wide RBAC allowed")
    if kind == "Secret":
        problems.append(f"{label}: Secrets are referenced by name, never committed")
    if kind == "Role":
        for rule in obj.get("rules", []):
            for group in rule.get("apiGroups", []):
                for res in rule.get("resources", []):
                    allowed = ALLOWED.get((group, res), set())
                    extra = set(rule.get("verbs", [])) - allowed
                    if extra:
                        problems.append(f"{label}: grants {sorted(extra)} on {group}/{res}")
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

overlays = sorted(p for p in (ROOT / "kubernetes" / "overlays").iterdir() if p.is_dir())
for overlay in overlays:
    out = subprocess.run(["kubectl", "kustomize", str(overlay)], capture_output=True, text=True)
    if out.returncode != 0:
        problems.append(f"{overlay.name}: kubectl kustomize failed: {out.stderr.strip()}")
        continue
    docs = [d for d in yaml.safe_load_all(out.stdout) if d]
    for d in docs:
        check(d, overlay.name)
    print(f"{overlay.name}: {len(docs)} objects rendered and checked")
for app in sorted((ROOT / "kubernetes" / "argocd").glob("*.yaml")):
    for d in yaml.safe_load_all(app.read_text()):
        if d:
            check(d, f"argocd/{app.name}")
            path = ROOT.parent / dig(d, ("spec", "source", "path"))
            if not path.is_dir():
                problems.append(f"argocd/{app.name}: source path {path} does not exist")
for p in problems:
    print("PROBLEM", p, file=sys.stderr)
sys.exit(1 if problems else 0)
