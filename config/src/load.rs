//! Loading: defaults → YAML file → `FACTEUR_*` environment, then validation.
//!
//! The set of keys is derived from [`Config::default`] serialized to a tree, so the typed structs
//! stay the single source of truth: a struct section is an object with keys, a free-form map
//! (`role_map`, `argo.parameters`) is an empty object, anything else is a leaf.

use crate::model::{Config, Process};
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

/// Environment names kept from the old service that do not follow `FACTEUR_<PATH>`.
pub const ENV_ALIASES: &[(&str, &str)] = &[
    ("FACTEUR_KUBECONFIG", "argo.kubeconfig"),
    ("FACTEUR_DISABLE_DISPATCHER", "dispatcher.disabled"),
    (
        "FACTEUR_CODEX_ENABLE_IMPLEMENTATION_ORCHESTRATION",
        "codex_implementation_orchestrator.enabled",
    ),
    ("FACTEUR_LOG_FORMAT", "telemetry.log_format"),
    ("FACTEUR_LOG_LEVEL", "telemetry.log_level"),
];

/// One problem, naming its key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    /// Dotted key (`server.listen_address`, `role_map.deploy`, `auth.tokens[0].role`).
    pub key: String,
    /// What is wrong.
    pub message: String,
}

/// Every problem found, reported together.
#[derive(Debug)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "invalid configuration ({} problem{}):",
            self.0.len(),
            if self.0.len() == 1 { "" } else { "s" }
        )?;
        for e in &self.0 {
            writeln!(f, "  {}: {}", e.key, e.message)?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// Loads the configuration of `process` from `path` (else `FACTEUR_CONFIG_FILE`, else no file)
/// and the process environment.
pub fn load(path: Option<&Path>, process: Process) -> Result<Config, ConfigErrors> {
    let env: BTreeMap<String, String> = std::env::vars()
        .filter(|(k, _)| k.starts_with("FACTEUR_"))
        .collect();
    let path: Option<PathBuf> = path.map(Path::to_path_buf).or_else(|| {
        env.get("FACTEUR_CONFIG_FILE")
            .filter(|p| !p.is_empty())
            .map(PathBuf::from)
    });
    let yaml = match &path {
        Some(p) => match std::fs::read_to_string(p) {
            Ok(s) => Some(s),
            Err(e) => {
                return Err(ConfigErrors(vec![ConfigError {
                    key: "config file".into(),
                    message: format!("cannot read {}: {e}", p.display()),
                }]));
            }
        },
        None => None,
    };
    load_from(yaml.as_deref(), &env, process)
}

/// Loads from YAML text (if any) and an explicit environment map. Pure: used by tests.
pub fn load_from(
    yaml: Option<&str>,
    env: &BTreeMap<String, String>,
    process: Process,
) -> Result<Config, ConfigErrors> {
    let mut errors = Vec::new();
    let defaults = serde_json::to_value(Config::default()).unwrap_or(Value::Null);

    let mut tree = match yaml.map(serde_yaml_ng::from_str::<Value>) {
        None => Value::Object(Map::new()),
        Some(Ok(Value::Null)) => Value::Object(Map::new()),
        Some(Ok(v @ Value::Object(_))) => v,
        Some(Ok(_)) => {
            errors.push(err(
                "config file",
                "the top level must be a mapping of keys",
            ));
            Value::Object(Map::new())
        }
        Some(Err(e)) => {
            errors.push(err("config file", &format!("not valid YAML: {e}")));
            Value::Object(Map::new())
        }
    };

    // Unknown keys in the file are reported and dropped, so the rest still gets checked.
    drop_unknown(&mut tree, &defaults, "", &mut errors);

    // Environment over file.
    let mut from_env: BTreeMap<String, String> = BTreeMap::new();
    let mut leaves = Vec::new();
    collect_leaves(&defaults, "", &mut leaves);
    let mut bindings: Vec<(String, String, &Value)> = leaves
        .iter()
        .map(|(path, default)| (env_name(path), path.clone(), *default))
        .collect();
    for (name, path) in ENV_ALIASES {
        if let Some((_, d)) = leaves.iter().find(|(p, _)| p == path) {
            bindings.push((name.to_string(), path.to_string(), *d));
        }
    }
    for (name, path, default) in bindings {
        let Some(raw) = env.get(&name) else { continue };
        match parse_env(raw, default) {
            Ok(Some(v)) => {
                set_path(&mut tree, &path, v);
                from_env.insert(path, name);
            }
            Ok(None) => {}
            Err(m) => errors.push(err(&path, &format!("{m} (from {name})"))),
        }
    }

    // Deserialize; each value that does not fit is reported and reset to its default.
    let config = loop {
        match serde_path_to_error::deserialize::<_, Config>(tree.clone()) {
            Ok(c) => break Some(c),
            Err(e) => {
                let path = e.path().to_string();
                let mut message = e.inner().to_string();
                if let Some(name) = from_env.get(&path) {
                    message = format!("{message} (from {name})");
                }
                errors.push(err(&path, &message));
                if errors.len() > 200 || !remove_path(&mut tree, &path) {
                    break None;
                }
            }
        }
    };

    if let Some(c) = &config {
        errors.extend(
            c.validate(process)
                .into_iter()
                .map(|(key, message)| ConfigError { key, message }),
        );
    }
    match config {
        Some(c) if errors.is_empty() => Ok(c),
        _ => Err(ConfigErrors(errors)),
    }
}

fn err(key: &str, message: &str) -> ConfigError {
    ConfigError {
        key: key.into(),
        message: message.into(),
    }
}

fn join(prefix: &str, key: &str) -> String {
    if prefix.is_empty() {
        key.to_string()
    } else {
        format!("{prefix}.{key}")
    }
}

/// `server.grpc_listen_address` → `FACTEUR_SERVER_GRPC_LISTEN_ADDRESS`.
pub fn env_name(path: &str) -> String {
    format!("FACTEUR_{}", path.replace('.', "_").to_ascii_uppercase())
}

fn is_section(v: &Value) -> bool {
    matches!(v, Value::Object(m) if !m.is_empty())
}

fn drop_unknown(tree: &mut Value, defaults: &Value, prefix: &str, errors: &mut Vec<ConfigError>) {
    let (Value::Object(map), Value::Object(known)) = (tree, defaults) else {
        return;
    };
    let keys: Vec<String> = map.keys().cloned().collect();
    for k in keys {
        let path = join(prefix, &k);
        match known.get(&k) {
            None => {
                errors.push(err(&path, "unknown key"));
                map.remove(&k);
            }
            Some(d) if is_section(d) => {
                if let Some(child) = map.get_mut(&k) {
                    drop_unknown(child, d, &path, errors);
                }
            }
            Some(_) => {}
        }
    }
}

fn collect_leaves<'a>(v: &'a Value, prefix: &str, out: &mut Vec<(String, &'a Value)>) {
    match v {
        Value::Object(m) if !m.is_empty() => {
            for (k, child) in m {
                collect_leaves(child, &join(prefix, k), out);
            }
        }
        _ => out.push((prefix.to_string(), v)),
    }
}

/// Every key of the configuration, dotted, with its environment variable name.
pub fn all_keys() -> Vec<(String, String)> {
    let defaults = serde_json::to_value(Config::default()).unwrap_or(Value::Null);
    let mut leaves = Vec::new();
    collect_leaves(&defaults, "", &mut leaves);
    leaves
        .into_iter()
        .map(|(p, _)| (env_name(&p), p))
        .map(|(e, p)| (p, e))
        .collect()
}

/// Parses an environment value by the type of the key's default. `Ok(None)`: empty, ignored.
fn parse_env(raw: &str, default: &Value) -> Result<Option<Value>, String> {
    let trimmed = raw.trim();
    match default {
        Value::String(_) | Value::Null => Ok(Some(Value::String(raw.to_string()))),
        _ if trimmed.is_empty() => Ok(None),
        Value::Bool(_) => match trimmed.to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" | "on" => Ok(Some(Value::Bool(true))),
            "false" | "0" | "no" | "off" => Ok(Some(Value::Bool(false))),
            _ => Err(format!("`{trimmed}` is not a boolean")),
        },
        Value::Number(_) => trimmed
            .parse::<u64>()
            .map(|n| Some(Value::from(n)))
            .map_err(|_| format!("`{trimmed}` is not a non-negative integer")),
        Value::Object(_) | Value::Array(_) => serde_json::from_str::<Value>(trimmed)
            .map(Some)
            .map_err(|e| format!("not valid JSON: {e}")),
    }
}

fn set_path(tree: &mut Value, path: &str, value: Value) {
    let mut cur = tree;
    let parts: Vec<&str> = path.split('.').collect();
    for (i, part) in parts.iter().enumerate() {
        if !cur.is_object() {
            *cur = Value::Object(Map::new());
        }
        let Value::Object(map) = cur else { return };
        if i + 1 == parts.len() {
            map.insert(part.to_string(), value);
            return;
        }
        cur = map
            .entry(part.to_string())
            .or_insert_with(|| Value::Object(Map::new()));
    }
}

/// Removes the value at a serde_path_to_error path (`a.b[2].c`). False when nothing was removed.
fn remove_path(tree: &mut Value, path: &str) -> bool {
    let mut segs: Vec<Seg> = Vec::new();
    for part in path.split('.') {
        let (name, rest) = part.split_once('[').map_or((part, ""), |(n, r)| (n, r));
        if !name.is_empty() {
            segs.push(Seg::Key(name.to_string()));
        }
        for idx in rest.split('[') {
            if let Ok(i) = idx.trim_end_matches(']').parse::<usize>() {
                segs.push(Seg::Index(i));
            }
        }
    }
    let Some((last, init)) = segs.split_last() else {
        return false;
    };
    let mut cur = tree;
    for s in init {
        let next = match (s, cur) {
            (Seg::Key(k), Value::Object(m)) => m.get_mut(k),
            (Seg::Index(i), Value::Array(a)) => a.get_mut(*i),
            _ => None,
        };
        match next {
            Some(n) => cur = n,
            None => return false,
        }
    }
    match (last, cur) {
        (Seg::Key(k), Value::Object(m)) => m.remove(k).is_some(),
        (Seg::Index(i), Value::Array(a)) if *i < a.len() => {
            a.remove(*i);
            true
        }
        _ => false,
    }
}

enum Seg {
    Key(String),
    Index(usize),
}

impl Config {
    /// The effective configuration as YAML with every secret redacted (`facteur config check`).
    pub fn redacted_yaml(&self) -> String {
        let mut v = serde_json::to_value(self).unwrap_or(Value::Null);
        for path in ["database.url", "postgres.dsn", "redis.url"] {
            redact_at(&mut v, path, crate::model::redact_url);
        }
        for path in [
            "discord.bot_token",
            "control_plane.token",
            "argo.callback_token",
        ] {
            redact_at(&mut v, path, |_| "[redacted]".into());
        }
        if let Some(Value::Array(tokens)) = v.pointer_mut("/auth/tokens") {
            for t in tokens {
                if let Some(tok) = t.get_mut("token") {
                    *tok = Value::String("[redacted]".into());
                }
            }
        }
        serde_yaml_ng::to_string(&v).unwrap_or_default()
    }
}

fn redact_at(v: &mut Value, path: &str, f: impl Fn(&str) -> String) {
    let pointer = format!("/{}", path.replace('.', "/"));
    if let Some(Value::String(s)) = v.pointer_mut(&pointer)
        && !s.is_empty()
    {
        *s = f(s);
    }
}
