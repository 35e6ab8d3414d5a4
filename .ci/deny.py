#!/usr/bin/env python3
"""Offline dependency checks from deny.toml (the part of cargo-deny's format this reads):
every crate's license expression must be satisfiable with [licenses].allow, and no crate may
appear in two versions unless [bans].skip names it. Reads `cargo metadata` (no network)."""
import json
import re
import subprocess
import sys
import tomllib

with open("deny.toml", "rb") as f:
    cfg = tomllib.load(f)
allow = set(cfg["licenses"]["allow"])
skip = set(cfg["bans"].get("skip", []))

meta = json.loads(
    subprocess.check_output(
        ["cargo", "metadata", "--format-version", "1", "--locked", "--offline",
         "--filter-platform", "x86_64-unknown-linux-gnu"]
    )
)
used = {n["id"] for n in meta["resolve"]["nodes"]}
packages = [p for p in meta["packages"] if p["id"] in used]


def satisfied(expr: str) -> bool:
    """An SPDX expression (OR, AND, WITH, parentheses; the old `A/B` means A OR B)."""
    tokens = re.findall(r"\(|\)|[^\s()]+", expr.replace("/", " OR "))
    pos = 0

    def primary():
        nonlocal pos
        if tokens[pos] == "(":
            pos += 1
            v = disjunction()
            pos += 1  # ')'
            return v
        lic = tokens[pos]
        pos += 1
        if pos < len(tokens) and tokens[pos] == "WITH":
            lic = f"{lic} WITH {tokens[pos + 1]}"
            pos += 2
        return lic in allow

    def conjunction():
        nonlocal pos
        v = primary()
        while pos < len(tokens) and tokens[pos] == "AND":
            pos += 1
            v = primary() and v
        return v

    def disjunction():
        nonlocal pos
        v = conjunction()
        while pos < len(tokens) and tokens[pos] == "OR":
            pos += 1
            v = conjunction() or v
        return v

    return disjunction()


problems = []
for p in packages:
    if p["source"] is None:
        continue  # the workspace's own crates
    lic = p.get("license")
    if not lic or not satisfied(lic):
        problems.append(f"license: {p['name']} {p['version']} is `{lic}`, not allowed by deny.toml")

versions = {}
for p in packages:
    versions.setdefault(p["name"], set()).add(p["version"])
for name, vs in sorted(versions.items()):
    if len(vs) > 1 and name not in skip:
        problems.append(f"duplicate: {name} in {len(vs)} versions ({', '.join(sorted(vs))}); "
                        "use the one already in the build, or add it to [bans].skip with the reason")
stale = sorted(n for n in skip if len(versions.get(n, ())) < 2)
for name in stale:
    problems.append(f"deny.toml skips `{name}`, which is no longer duplicated: remove it")

for line in problems:
    print(line)
print(f"{len(packages)} crates checked: {len(problems)} problem(s)")
sys.exit(1 if problems else 0)
