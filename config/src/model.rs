//! The typed configuration. Defaults live here and nowhere else.
//!
//! Each field's environment variable is `FACTEUR_` + its dotted path in upper snake case
//! (`server.grpc_listen_address` → `FACTEUR_SERVER_GRPC_LISTEN_ADDRESS`); aliases are listed in
//! [`crate::load::ENV_ALIASES`].

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;

/// Which process is validating: a key is required only by the process that uses it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Process {
    /// `facteur` (the control plane).
    Server,
    /// `facteur-discord`.
    DiscordAdapter,
    /// `facteur-argo`.
    ArgoAdapter,
}

/// A secret string: serialized as-is (it must round-trip), but never shown by `Debug`.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(pub String);

impl Secret {
    /// The secret value. Call only where the value is used, never to log it.
    pub fn expose(&self) -> &str {
        &self.0
    }
    /// Whether no secret is set.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_empty() {
            "\"\""
        } else {
            "\"[redacted]\""
        })
    }
}

/// The whole configuration file.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Listeners of the control plane.
    pub server: ServerConfig,
    /// The database of the control plane.
    pub database: DatabaseConfig,
    /// Old name of the database setting (`postgres.dsn`, `FACTEUR_POSTGRES_DSN`).
    pub postgres: PostgresConfig,
    /// The session store (Redis, or in-memory when no URL is set).
    pub redis: RedisConfig,
    /// Bearer tokens of the gRPC API.
    pub auth: AuthConfig,
    /// Logs, traces and metrics.
    pub telemetry: TelemetryConfig,
    /// How the adapters and facteurctl reach the control plane.
    pub control_plane: ControlPlaneConfig,
    /// Discord application (used by the discord-adapter).
    pub discord: DiscordConfig,
    /// Argo Workflows defaults and the argo-adapter.
    pub argo: ArgoConfig,
    /// The Kubernetes clusters runs go to, each served by argo-adapters of its name. Empty:
    /// one cluster, `default`, with `argo.ui_base_url`. The first listed is where commands and
    /// Codex tasks that name no cluster run.
    pub clusters: Vec<ClusterConfig>,
    /// Command name → Discord role ids allowed to run it (seeds the role policy).
    pub role_map: BTreeMap<String, Vec<String>>,
    /// Codex implementation orchestration (wire-compat.md §5).
    pub codex_implementation_orchestrator: CodexOrchestratorConfig,
    /// Run dispatching.
    pub dispatcher: DispatcherConfig,
    /// How long finished history is kept.
    pub retention: RetentionConfig,
    /// What any typed value must respect.
    pub input: InputConfig,
    /// The command catalog. Empty: one command, `dispatch`, running `argo.workflow_template`
    /// with a `payload` option (the deployed `facteur-dispatch` template's one parameter).
    pub commands: Vec<CommandConfig>,
    /// Policy for commands born from WorkflowTemplates, by command name: wins over the
    /// template's annotations rule by rule.
    pub command_policies: BTreeMap<String, PolicyOverride>,
}

/// One command of the catalog (`commands[]`).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CommandConfig {
    /// Command name (`^[a-z0-9:_-]+$`, 1–32 characters).
    pub name: String,
    /// Description shown by Discord (1–100 characters).
    pub description: String,
    /// WorkflowTemplate; empty uses `argo.workflow_template`.
    pub workflow_template: String,
    /// Namespace; empty uses `argo.namespace`.
    pub namespace: String,
    /// Cluster (a name of `clusters`); empty: the first one listed (`default` without any).
    pub cluster: String,
    /// Service account; empty uses `argo.service_account`.
    pub service_account: String,
    /// Prefix of Workflow names; empty uses `<name>-`.
    pub workflow_name_prefix: String,
    /// Options; each value becomes the Argo parameter of the same name (or `parameter`).
    pub options: Vec<OptionConfig>,
    /// Replies only the invoker sees.
    pub ephemeral: bool,
    /// Open a modal instead of running at once (the old `/plan`); its inputs fill the options
    /// of the same names.
    pub modal: Option<ModalConfig>,
    /// A failed run's card shows the last lines of the failing step's log (the argo-adapter
    /// reads them with `pods/log` get in the Workflow's namespace: grant it there).
    pub show_logs: bool,
    /// Role ids that may approve or reject a suspend step of this command's runs; empty: the
    /// roles that may run the command (the guild's policy).
    pub approvers: Vec<String>,
    /// The member who started a run may not approve its steps.
    pub require_second_person: bool,
    /// Runs of this command one guild may have at once (not yet ended); unset: no limit.
    /// A guild's policy may set its own (`SetPolicy`, `facteurctl quota set`).
    pub max_concurrent: Option<u32>,
    /// Runs of this command one guild may start per rolling hour; unset: no limit.
    pub max_per_hour: Option<u32>,
    /// What an approver may supply at a suspend step of this command's runs, by the output
    /// parameter's name: a pattern the whole value must match (and its hint). Without one, a
    /// supplied value follows the default rules (`{{`, control characters, length, and no
    /// shell metacharacters where the Workflow puts it into a shell).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub approval_values: BTreeMap<String, ValueRuleConfig>,
}

/// The values one supplied parameter accepts (`commands[].approval_values.<name>`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ValueRuleConfig {
    /// A regular expression the whole value must match.
    pub pattern: String,
    /// What `pattern` allows, in words (at most 100 characters).
    pub pattern_hint: String,
}

/// The policy the operator sets for a command born from a WorkflowTemplate, by its name
/// (`command_policies.<name>`), without redefining the command: each rule set here wins over
/// the template's annotation; a rule left unset keeps the template's.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PolicyOverride {
    /// Role ids that may approve or reject its suspend steps (`[]`: the roles that may run it).
    pub approvers: Option<Vec<String>>,
    /// The member who started a run may not approve its steps.
    pub require_second_person: Option<bool>,
    /// Runs one guild may have at once.
    pub max_concurrent: Option<u32>,
    /// Runs one guild may start per rolling hour.
    pub max_per_hour: Option<u32>,
}

/// A command's modal (`commands[].modal`).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ModalConfig {
    /// Title (at most 45 characters).
    pub title: String,
    /// Text inputs (1 to 5), each named after an option of the command.
    pub inputs: Vec<ModalInputConfig>,
}

/// One text input of a modal.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ModalInputConfig {
    /// The option this input fills.
    pub name: String,
    /// Label shown above the input.
    pub label: String,
    /// Multi-line input.
    pub paragraph: bool,
    /// Placeholder text.
    pub placeholder: String,
}

/// One option of a command (`commands[].options[]`).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OptionConfig {
    /// Option name (lower case, 1–32 characters).
    pub name: String,
    /// Description shown by Discord.
    pub description: String,
    /// `string`, `integer`, `number`, `boolean`, `user`, `channel` or `role`. Default `string`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Must be given.
    pub required: bool,
    /// Fixed choices (at most 25).
    pub choices: Vec<ChoiceConfig>,
    /// Minimum for numbers.
    pub min_value: Option<f64>,
    /// Maximum for numbers.
    pub max_value: Option<f64>,
    /// Minimum length for strings.
    pub min_length: Option<u32>,
    /// Maximum length for strings.
    pub max_length: Option<u32>,
    /// Offer values through autocomplete (not with `choices`).
    pub autocomplete: bool,
    /// Argo parameter that receives the value; empty uses the option name (case kept).
    pub parameter: String,
    /// The values accepted (strings): a regular expression the whole value must match. With a
    /// pattern, the template's author vouches for what passes (no shell restriction applies).
    pub pattern: String,
    /// What `pattern` allows, in the words a member reads when a value is refused
    /// (`a service name: lower case letters and dashes`). At most 100 characters.
    pub pattern_hint: String,
    /// Where the WorkflowTemplate puts the value into a shell or an expression
    /// (`templates[1].script.source`), as the argo-adapter's lint found it: the value then
    /// takes no shell metacharacters unless `pattern` is set. Set from the template; may be
    /// set by hand for a template the adapter cannot see.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub interpolated_in: Vec<String>,
}

/// Longest `pattern_hint`.
pub const MAX_PATTERN_HINT: usize = 100;

/// `pattern` as it is matched: against the whole value.
pub fn whole_value_pattern(pattern: &str) -> Result<regex_lite::Regex, String> {
    regex_lite::Regex::new(&format!("^(?:{pattern})$")).map_err(|e| {
        let e = e.to_string();
        let first = e.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or(&e);
        format!("`{pattern}` is not a regular expression: {}", first.trim())
    })
}

/// A fixed choice.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ChoiceConfig {
    /// Label.
    pub name: String,
    /// Value.
    pub value: String,
}

/// Option types of the catalog.
pub const OPTION_TYPES: [&str; 7] = [
    "string", "integer", "number", "boolean", "user", "channel", "role",
];

impl Config {
    /// The catalog in effect (the implicit `dispatch` command when none is configured).
    pub fn catalog(&self) -> Vec<CommandConfig> {
        if !self.commands.is_empty() {
            return self.commands.clone();
        }
        vec![CommandConfig {
            name: "dispatch".into(),
            description: "Run the configured Argo WorkflowTemplate".into(),
            options: vec![OptionConfig {
                name: "payload".into(),
                description: "Payload handed to the workflow".into(),
                kind: "string".into(),
                max_length: Some(6000),
                ..Default::default()
            }],
            ..Default::default()
        }]
    }
}

/// Checks a `pattern` and its `pattern_hint` set for supplied values (`key` names them).
pub fn validate_value_rule(key: &str, rule: &ValueRuleConfig, err: &mut impl FnMut(&str, String)) {
    if rule.pattern.is_empty() {
        err(&format!("{key}.pattern"), "is required".into());
    } else if let Err(e) = whole_value_pattern(&rule.pattern) {
        err(&format!("{key}.pattern"), e);
    }
    if rule.pattern_hint.chars().count() > MAX_PATTERN_HINT {
        err(
            &format!("{key}.pattern_hint"),
            format!("at most {MAX_PATTERN_HINT} characters"),
        );
    }
}

/// Checks `command_policies` against the configured `commands`: an override names a command
/// that is not configured (a configured command sets its policy on itself), its approvers are
/// role ids.
pub fn validate_policies(
    policies: &BTreeMap<String, PolicyOverride>,
    commands: &[CommandConfig],
    err: &mut impl FnMut(&str, String),
) {
    for (name, p) in policies {
        let key = format!("command_policies.{name}");
        if let Some(i) = commands.iter().position(|c| &c.name == name) {
            err(
                &key,
                format!("`{name}` is a configured command: set its policy on commands[{i}]"),
            );
        }
        if let Some(why) = crate::discord::name_problem(name) {
            err(&key, why);
        }
        for (j, role) in p.approvers.iter().flatten().enumerate() {
            if !is_snowflake(role) {
                err(
                    &format!("{key}.approvers[{j}]"),
                    format!("role id `{role}` is not a snowflake (^[0-9]{{17,20}}$)"),
                );
            }
        }
    }
}

/// Checks a catalog's commands as Discord and the server need them; `err(key, problem)` for each.
/// Discord's own limits are [`crate::discord::check_command`]'s; the rest is facteur's (types,
/// names taken, patterns, what a modal's inputs fill, approvers).
pub fn validate_commands(commands: &[CommandConfig], err: &mut impl FnMut(&str, String)) {
    let builtins = ["status", "runs", "cancel"];
    if commands.len() + builtins.len() > crate::discord::COMMANDS_MAX {
        err(
            "commands",
            format!(
                "{} commands and {} built-ins; Discord registers at most {} per guild",
                commands.len(),
                builtins.len(),
                crate::discord::COMMANDS_MAX
            ),
        );
    }
    let mut names = std::collections::BTreeSet::new();
    for (i, c) in commands.iter().enumerate() {
        let key = format!("commands[{i}]");
        crate::discord::check_command(c, &mut |k, p| err(&format!("{key}.{k}"), p));
        if !names.insert(c.name.as_str()) || builtins.contains(&c.name.as_str()) {
            err(
                &format!("{key}.name"),
                format!("`{}` is already taken (or built in)", c.name),
            );
        }
        if let Some(m) = &c.modal {
            for (j, input) in m.inputs.iter().enumerate() {
                if !c.options.iter().any(|o| o.name == input.name) {
                    err(
                        &format!("{key}.modal.inputs[{j}].name"),
                        format!("`{}` is not an option of the command", input.name),
                    );
                }
            }
        }
        for (j, role) in c.approvers.iter().enumerate() {
            if !is_snowflake(role) {
                err(
                    &format!("{key}.approvers[{j}]"),
                    format!("role id `{role}` is not a snowflake (^[0-9]{{17,20}}$)"),
                );
            }
        }
        for (name, rule) in &c.approval_values {
            validate_value_rule(&format!("{key}.approval_values.{name}"), rule, err);
        }
        let mut opts = std::collections::BTreeSet::new();
        for (j, o) in c.options.iter().enumerate() {
            let okey = format!("{key}.options[{j}]");
            if !opts.insert(o.name.as_str()) {
                err(
                    &format!("{okey}.name"),
                    format!("duplicate option `{}`", o.name),
                );
            }
            let kind = if o.kind.is_empty() {
                "string"
            } else {
                o.kind.as_str()
            };
            if !OPTION_TYPES.contains(&kind) {
                err(
                    &format!("{okey}.type"),
                    format!("`{}` is not one of {}", o.kind, OPTION_TYPES.join(", ")),
                );
            }
            if let (Some(a), Some(b)) = (o.min_value, o.max_value)
                && a > b
            {
                err(
                    &format!("{okey}.min_value"),
                    "must not exceed max_value".into(),
                );
            }
            if !o.pattern.is_empty() {
                if kind != "string" {
                    err(
                        &format!("{okey}.pattern"),
                        format!("only string options take a pattern (this one is {kind})"),
                    );
                } else if let Err(e) = whole_value_pattern(&o.pattern) {
                    err(&format!("{okey}.pattern"), e);
                }
            }
            if o.pattern_hint.chars().count() > MAX_PATTERN_HINT {
                err(
                    &format!("{okey}.pattern_hint"),
                    format!("at most {MAX_PATTERN_HINT} characters"),
                );
            }
            if !o.pattern_hint.is_empty() && o.pattern.is_empty() {
                err(
                    &format!("{okey}.pattern_hint"),
                    "says what `pattern` allows; set `pattern` too".into(),
                );
            }
            if let (Some(a), Some(b)) = (o.min_length, o.max_length)
                && a > b
            {
                err(
                    &format!("{okey}.min_length"),
                    "must not exceed max_length".into(),
                );
            }
        }
    }
}

/// `server.*`
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// gRPC listener. Default `127.0.0.1:50051`.
    pub grpc_listen_address: String,
    /// HTTP listener (health, readiness, metrics, compatibility endpoints). Default `127.0.0.1:8080`.
    pub listen_address: String,
    /// Seconds to let in-flight RPCs finish after SIGTERM. Default 20.
    pub shutdown_grace_seconds: u64,
    /// Seconds between dependency health checks. Default 2.
    pub health_check_interval_seconds: u64,
    /// PEM certificate chain for TLS on the gRPC listener; empty serves plaintext.
    pub tls_cert_file: String,
    /// PEM private key for `tls_cert_file`.
    pub tls_key_file: String,
    /// PEM CA bundle; when set, clients must present a certificate signed by it (mTLS).
    pub tls_client_ca_file: String,
    /// Accept `POST /codex/tasks` and `POST /events` without a bearer token, for producers
    /// that cannot send one (a Knative KafkaSource sink). Only on a cluster-internal listener.
    /// Default false.
    pub compat_unauthenticated: bool,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            grpc_listen_address: "127.0.0.1:50051".into(),
            listen_address: "127.0.0.1:8080".into(),
            shutdown_grace_seconds: 20,
            health_check_interval_seconds: 2,
            tls_cert_file: String::new(),
            tls_key_file: String::new(),
            tls_client_ca_file: String::new(),
            compat_unauthenticated: false,
        }
    }
}

/// The embedded default database: a SQLite file beside the process, created on first start.
pub const DEFAULT_DATABASE_URL: &str = "sqlite://facteur.db?mode=rwc";

/// `database.*`
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DatabaseConfig {
    /// `sqlite://…` or `postgres://…`. Empty: `postgres.dsn` if set, else the SQLite file
    /// `./facteur.db`.
    pub url: Secret,
    /// Connection pool size. Default 10. On Postgres every connection is opened at start and
    /// kept open.
    pub max_connections: u32,
    /// Seconds to wait for a connection. Default 5.
    pub connect_timeout_seconds: u64,
    /// Postgres: Codex submission batches in flight at once. Submissions arriving while every
    /// slot is busy are written together by the next statement (group commit). Default 2.
    pub codex_batch_slots: u32,
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        Self {
            url: Secret::default(),
            max_connections: 10,
            connect_timeout_seconds: 5,
            codex_batch_slots: 2,
        }
    }
}

/// `postgres.*` (the old service's name for the database).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PostgresConfig {
    /// Postgres DSN (`postgres://user:pass@host/db`).
    pub dsn: Secret,
}

/// `redis.*`
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RedisConfig {
    /// `redis://…` or `rediss://…`. Empty: the in-memory session store (one replica only).
    pub url: Secret,
    /// Prefix of every key facteur writes (lets several deployments share one Redis). Default "".
    pub key_prefix: String,
    /// Connection pool size. Default 16.
    pub pool_size: usize,
    /// Milliseconds before a Redis call is abandoned. Default 1000.
    pub timeout_ms: u64,
}

impl Default for RedisConfig {
    fn default() -> Self {
        Self {
            url: Secret::default(),
            key_prefix: String::new(),
            pool_size: 16,
            timeout_ms: 1000,
        }
    }
}

/// The four principal roles of the gRPC API.
pub const ROLES: [&str; 4] = [
    "discord-adapter",
    "argo-adapter",
    "codex-submitter",
    "admin",
];

/// `auth.*`
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// Bearer tokens, one per principal. Empty turns auth off (loopback binds only).
    pub tokens: Vec<TokenConfig>,
}

/// One entry of `auth.tokens`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    /// Principal name (shown in the audit trail).
    pub name: String,
    /// One of `discord-adapter`, `argo-adapter`, `codex-submitter`, `admin`.
    pub role: String,
    /// The bearer token (at least 16 characters).
    pub token: Secret,
    /// For an `argo-adapter` token: the only cluster it may lease, report and list templates
    /// for. Empty: any.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub cluster: String,
}

/// One entry of `clusters`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterConfig {
    /// Its name (a DNS label: `^[a-z0-9]([-a-z0-9]*[a-z0-9])?$`, at most 63), as its
    /// argo-adapters give it (`argo.cluster`).
    pub name: String,
    /// Base URL of that cluster's Argo UI, for the "Open in Argo" links.
    pub ui_base_url: String,
    /// Namespaces runs go to there, besides those of the commands that name the cluster.
    pub namespaces: Vec<String>,
}

/// The cluster of a deployment without `clusters`.
pub const DEFAULT_CLUSTER: &str = "default";

/// Whether `s` is a cluster name: a DNS label (1–63 of `[a-z0-9-]`, no `-` at either end).
pub fn is_cluster_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// `telemetry.*`
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TelemetryConfig {
    /// `auto` (JSON unless stdout is a terminal), `json` or `pretty`. Default `auto`.
    pub log_format: String,
    /// `tracing` filter directive (overridden by `RUST_LOG`). Default `info`.
    pub log_level: String,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self {
            log_format: "auto".into(),
            log_level: "info".into(),
        }
    }
}

/// `control_plane.*`
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ControlPlaneConfig {
    /// gRPC URL of the server (`http://facteur:50051`). Required by the adapters.
    pub url: String,
    /// Bearer token the adapter presents.
    pub token: Secret,
    /// PEM CA to trust for an `https://` URL; empty uses the system roots.
    pub ca_file: String,
}

/// `discord.*`
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DiscordConfig {
    /// Bot token (discord-adapter only).
    pub bot_token: Secret,
    /// Application id (snowflake).
    pub application_id: String,
    /// Hex Ed25519 public key of the application (64 hex characters); HTTP mode only.
    pub public_key: String,
    /// Register commands in this guild only; empty registers them globally.
    pub guild_id: String,
    /// `http` (interactions endpoint) or `gateway` (websocket; exactly one replica). Default `http`.
    pub mode: String,
    /// Interactions endpoint listener. Default `0.0.0.0:8081`.
    pub interactions_listen_address: String,
    /// Discord REST base URL (tests and proxies). Default `https://discord.com`.
    pub api_base_url: String,
    /// What a command without a `role_map` entry allows: `allow` (everyone) or `deny`.
    /// Default `allow`, as the old service.
    pub default_policy: String,
    /// Seconds the discord-adapter gives in-flight interactions (and the deferred answers it
    /// still owes Discord) after SIGTERM before it cuts them and exits non-zero. Default 20.
    pub shutdown_grace_seconds: u64,
}

impl Default for DiscordConfig {
    fn default() -> Self {
        Self {
            bot_token: Secret::default(),
            application_id: String::new(),
            public_key: String::new(),
            guild_id: String::new(),
            mode: "http".into(),
            interactions_listen_address: "0.0.0.0:8081".into(),
            api_base_url: "https://discord.com".into(),
            default_policy: "allow".into(),
            shutdown_grace_seconds: 20,
        }
    }
}

/// `argo.*`
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ArgoConfig {
    /// Namespace of Discord-command Workflows. Default `argo-workflows`.
    pub namespace: String,
    /// WorkflowTemplate of Discord commands. Default `facteur-dispatch`.
    pub workflow_template: String,
    /// Service account of the Workflows; empty leaves Argo's default.
    pub service_account: String,
    /// Parameters every Workflow gets (names keep their case); command options overlay them.
    pub parameters: BTreeMap<String, String>,
    /// Kubeconfig path; empty falls back to `KUBECONFIG`, in-cluster, then `~/.kube/config`.
    pub kubeconfig: String,
    /// Listener of the exit-handler callback endpoint. Default `0.0.0.0:8082`.
    pub callback_listen_address: String,
    /// Base URL of the Argo UI, for links in Discord messages (of the `default` cluster when
    /// `clusters` is empty).
    pub ui_base_url: String,
    /// argo-adapter: the name of the cluster it drives (`clusters[].name` on the server).
    /// Default `default`.
    pub cluster: String,
    /// argo-adapter: the namespaces it may serve (its RBAC scope). The server assigns every
    /// namespace it dispatches to; this only narrows that. Empty: no narrowing.
    pub namespaces: Vec<String>,
    /// Bearer token Argo exit handlers present to the callback endpoint; empty disables it.
    pub callback_token: Secret,
    /// Dispatch jobs one argo-adapter works on at once. Default 16.
    pub max_in_flight: u32,
    /// Seconds the argo-adapter gives its in-flight jobs (a Workflow create and its completion)
    /// to finish after SIGTERM before it cuts them and exits non-zero. Default 20.
    pub shutdown_grace_seconds: u64,
}

impl Default for ArgoConfig {
    fn default() -> Self {
        Self {
            namespace: "argo-workflows".into(),
            workflow_template: "facteur-dispatch".into(),
            service_account: String::new(),
            parameters: BTreeMap::new(),
            kubeconfig: String::new(),
            callback_listen_address: "0.0.0.0:8082".into(),
            ui_base_url: String::new(),
            cluster: DEFAULT_CLUSTER.into(),
            namespaces: Vec::new(),
            callback_token: Secret::default(),
            max_in_flight: 16,
            shutdown_grace_seconds: 20,
        }
    }
}

/// `codex_implementation_orchestrator.*` (wire-compat.md §5).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CodexOrchestratorConfig {
    /// Accept implementation tasks. Default false.
    pub enabled: bool,
    /// Namespace of non-autonomous Workflows (else `argo.namespace`).
    pub namespace: String,
    /// Namespace of autonomous Workflows (else `namespace`, `argo.namespace`, `jangar`).
    pub autonomous_namespace: String,
    /// Template of non-autonomous tasks. Default `github-codex-implementation`.
    pub workflow_template: String,
    /// Template of autonomous tasks. Default `codex-autonomous`.
    pub autonomous_workflow_template: String,
    /// Service account of non-autonomous Workflows.
    pub service_account: String,
    /// Service account of autonomous Workflows.
    pub autonomous_service_account: String,
    /// Extra parameters (names keep their case).
    pub parameters: BTreeMap<String, String>,
    /// Prefix of autonomous Workflow names. Default `codex-autonomous-`.
    pub autonomous_generate_name_prefix: String,
    /// Judge prompt passed as the `judge_prompt` parameter when set.
    pub judge_prompt: String,
    /// Cluster of the Workflows (a name of `clusters`); empty: the first one listed.
    pub cluster: String,
}

impl Default for CodexOrchestratorConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            namespace: String::new(),
            autonomous_namespace: String::new(),
            workflow_template: "github-codex-implementation".into(),
            autonomous_workflow_template: "codex-autonomous".into(),
            service_account: String::new(),
            autonomous_service_account: String::new(),
            parameters: BTreeMap::new(),
            autonomous_generate_name_prefix: "codex-autonomous-".into(),
            judge_prompt: String::new(),
            cluster: String::new(),
        }
    }
}

/// `dispatcher.*`
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DispatcherConfig {
    /// Accept runs but hand no dispatch to adapters (`FACTEUR_DISABLE_DISPATCHER`). Default false.
    pub disabled: bool,
    /// Seconds an adapter holds a lease before the job is offered again. Default 30.
    pub lease_seconds: u64,
    /// Attempts before a dispatch is dead-lettered. Default 5.
    pub max_attempts: u32,
    /// First retry delay in milliseconds, doubled per attempt. Default 1000.
    pub backoff_initial_ms: u64,
    /// Cap of the retry delay in milliseconds. Default 60000.
    pub backoff_max_ms: u64,
    /// Seconds a run may wait in a namespace that no argo-adapter serves before it counts as
    /// stranded (`facteur_stranded_runs`, a warning in the log). It keeps waiting: an adapter
    /// that comes takes it. Default 60.
    pub strand_after_seconds: u64,
}

impl Default for DispatcherConfig {
    fn default() -> Self {
        Self {
            disabled: false,
            lease_seconds: 30,
            max_attempts: 5,
            backoff_initial_ms: 1000,
            backoff_max_ms: 60_000,
            strand_after_seconds: 60,
        }
    }
}

/// `retention.*`: how long history is kept, as durations (`90d`, `12h`, `2w`; `0` or empty
/// keeps everything). A background task deletes what is older in small batches.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetentionConfig {
    /// Finished runs with their history and dispatches, by when they finished. Default `90d`.
    /// Runs that are not final are never deleted, however old.
    pub runs: String,
    /// Audit entries. Default `365d`.
    pub audit: String,
    /// Codex task runs (`codex_kb.task_runs`), by when they were last updated. Default empty:
    /// kept, since other tools read `codex_kb`.
    pub codex_task_runs: String,
    /// Seconds between two passes. Default 300.
    pub interval_seconds: u64,
    /// Rows deleted per statement (short transactions, no long locks). Default 500.
    pub batch_size: u32,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        Self {
            runs: "90d".into(),
            audit: "365d".into(),
            codex_task_runs: String::new(),
            interval_seconds: 300,
            batch_size: 500,
        }
    }
}

/// `input.*`: bounds every typed value respects, whatever its command.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct InputConfig {
    /// Longest free-text value of an option without its own `max_length`, in characters.
    /// Default 1000.
    pub max_value_length: u32,
}

impl Default for InputConfig {
    fn default() -> Self {
        Self {
            max_value_length: 1000,
        }
    }
}

/// A retention window: `<n><unit>` with unit `s`, `m`, `h`, `d` or `w`; `0` or empty is `None`
/// (keep everything).
pub fn parse_retention(s: &str) -> Result<Option<std::time::Duration>, String> {
    let t = s.trim();
    if t.is_empty() || t == "0" {
        return Ok(None);
    }
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (n, unit) = t.split_at(split);
    let n: u64 = n
        .parse()
        .map_err(|_| format!("`{s}` is not a duration such as 90d, 12h or 2w"))?;
    let per = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        "w" => 7 * 86_400,
        "" => return Err(format!("`{s}` needs a unit: s, m, h, d or w (90d, say)")),
        _ => return Err(format!("`{s}`: unit must be s, m, h, d or w")),
    };
    if n == 0 {
        return Ok(None);
    }
    n.checked_mul(per)
        .filter(|secs| *secs <= 100 * 365 * 86_400)
        .map(|secs| Some(std::time::Duration::from_secs(secs)))
        .ok_or_else(|| format!("`{s}` is longer than 100 years"))
}

/// Which database backend a URL selects.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DatabaseBackend {
    /// `sqlite:`
    Sqlite,
    /// `postgres:` / `postgresql:`
    Postgres,
}

impl Config {
    /// The database URL in effect: `database.url`, else `postgres.dsn`, else the SQLite default.
    pub fn database_url(&self) -> &str {
        if !self.database.url.is_empty() {
            self.database.url.expose()
        } else if !self.postgres.dsn.is_empty() {
            self.postgres.dsn.expose()
        } else {
            DEFAULT_DATABASE_URL
        }
    }

    /// Backend of [`Config::database_url`], if the scheme is known.
    pub fn database_backend(&self) -> Option<DatabaseBackend> {
        backend_of(self.database_url())
    }

    /// Namespaces an argo-adapter serves by its own configuration alone: used only against a
    /// server too old to assign them (`DispatchService.GetAssignment`).
    pub fn watch_namespaces(&self) -> Vec<String> {
        let mut ns: Vec<String> = if self.argo.namespaces.is_empty() {
            let c = &self.codex_implementation_orchestrator;
            let mut v = vec![self.argo.namespace.clone()];
            for cmd in &self.commands {
                v.push(cmd.namespace.clone());
            }
            if c.enabled {
                v.extend([c.namespace.clone(), c.autonomous_namespace.clone()]);
                if c.namespace.is_empty()
                    && c.autonomous_namespace.is_empty()
                    && self.argo.namespace.is_empty()
                {
                    v.push("jangar".into());
                }
            }
            v
        } else {
            self.argo.namespaces.clone()
        };
        ns.retain(|n| !n.is_empty());
        ns.sort();
        ns.dedup();
        ns
    }

    /// The clusters runs go to: `clusters`, or the one `default` cluster (with
    /// `argo.ui_base_url`) without any.
    pub fn clusters(&self) -> Vec<ClusterConfig> {
        if self.clusters.is_empty() {
            vec![ClusterConfig {
                name: DEFAULT_CLUSTER.into(),
                ui_base_url: self.argo.ui_base_url.clone(),
                namespaces: Vec::new(),
            }]
        } else {
            self.clusters.clone()
        }
    }

    /// Where a command or a Codex task that names no cluster runs: the first listed.
    pub fn default_cluster(&self) -> &str {
        self.clusters
            .first()
            .map_or(DEFAULT_CLUSTER, |c| c.name.as_str())
    }

    /// `cluster` itself, or [`Config::default_cluster`] when empty.
    pub fn cluster_or_default<'a>(&'a self, cluster: &'a str) -> &'a str {
        if cluster.is_empty() {
            self.default_cluster()
        } else {
            cluster
        }
    }

    /// Whether gRPC auth is on (at least one token configured).
    pub fn auth_enabled(&self) -> bool {
        !self.auth.tokens.is_empty()
    }

    /// Every problem with the values, each naming its key (empty when valid).
    pub fn validate(&self, process: Process) -> Vec<(String, String)> {
        let mut v = Vec::new();
        let mut err = |k: &str, m: String| v.push((k.to_string(), m));
        if process == Process::Server {
            for (key, addr) in [
                (
                    "server.grpc_listen_address",
                    &self.server.grpc_listen_address,
                ),
                ("server.listen_address", &self.server.listen_address),
            ] {
                if addr.parse::<SocketAddr>().is_err() {
                    err(key, format!("`{addr}` is not a socket address (host:port)"));
                }
            }
            if !self.database.url.is_empty()
                && !self.postgres.dsn.is_empty()
                && self.database.url != self.postgres.dsn
            {
                err(
                    "database.url",
                    "both database.url and postgres.dsn are set and differ; set one".into(),
                );
            }
            if self.database_backend().is_none() {
                err(
                    if self.database.url.is_empty() {
                        "postgres.dsn"
                    } else {
                        "database.url"
                    },
                    "must start with sqlite:, postgres: or postgresql:".into(),
                );
            }
            if self.database.max_connections < 2 {
                // Migrations hold one connection for the advisory lock while running on another.
                err("database.max_connections", "must be at least 2".into());
            }
            if self.database.codex_batch_slots == 0
                || self.database.codex_batch_slots >= self.database.max_connections
            {
                // Each batch holds a connection; the rest of the server needs one too.
                err(
                    "database.codex_batch_slots",
                    format!(
                        "must be at least 1 and below database.max_connections ({})",
                        self.database.max_connections
                    ),
                );
            }
            if !self.redis.url.is_empty() {
                let u = self.redis.url.expose();
                if !(u.starts_with("redis://")
                    || u.starts_with("rediss://")
                    || u.starts_with("redis+unix://")
                    || u.starts_with("unix://"))
                {
                    err(
                        "redis.url",
                        "must start with redis://, rediss:// or unix://".into(),
                    );
                }
            }
            if self.redis.pool_size == 0 {
                err("redis.pool_size", "must be at least 1".into());
            }
            if self.redis.timeout_ms == 0 {
                err("redis.timeout_ms", "must be at least 1".into());
            }
            let tls = [&self.server.tls_cert_file, &self.server.tls_key_file];
            if tls.iter().filter(|s| s.is_empty()).count() == 1 {
                err(
                    "server.tls_cert_file",
                    "tls_cert_file and tls_key_file must be set together".into(),
                );
            }
            if !self.server.tls_client_ca_file.is_empty() && self.server.tls_cert_file.is_empty() {
                err(
                    "server.tls_client_ca_file",
                    "needs server.tls_cert_file and server.tls_key_file".into(),
                );
            }
            let mut names = std::collections::BTreeSet::new();
            let mut tokens = std::collections::BTreeSet::new();
            for (i, t) in self.auth.tokens.iter().enumerate() {
                let key = format!("auth.tokens[{i}]");
                if t.name.trim().is_empty() {
                    err(&format!("{key}.name"), "must not be empty".into());
                } else if !names.insert(t.name.as_str()) {
                    err(
                        &format!("{key}.name"),
                        format!("duplicate principal name `{}`", t.name),
                    );
                }
                if !ROLES.contains(&t.role.as_str()) {
                    err(
                        &format!("{key}.role"),
                        format!("`{}` is not one of {}", t.role, ROLES.join(", ")),
                    );
                }
                if t.token.expose().len() < 16 {
                    err(
                        &format!("{key}.token"),
                        "must be at least 16 characters".into(),
                    );
                } else if !tokens.insert(t.token.expose()) {
                    err(
                        &format!("{key}.token"),
                        "the same token is configured twice".into(),
                    );
                }
            }
            let clusters = self.clusters();
            let known: Vec<&str> = clusters.iter().map(|c| c.name.as_str()).collect();
            let unknown = |name: &str| {
                format!(
                    "`{name}` is not a configured cluster (clusters: {})",
                    known.join(", ")
                )
            };
            let mut seen = std::collections::BTreeSet::new();
            for (i, c) in self.clusters.iter().enumerate() {
                if !is_cluster_name(&c.name) {
                    err(
                        &format!("clusters[{i}].name"),
                        format!(
                            "`{}` is not a cluster name (a DNS label: ^[a-z0-9]([-a-z0-9]*[a-z0-9])?$, at most 63)",
                            c.name
                        ),
                    );
                } else if !seen.insert(c.name.as_str()) {
                    err(
                        &format!("clusters[{i}].name"),
                        format!("duplicate cluster `{}`", c.name),
                    );
                }
                let web =
                    c.ui_base_url.starts_with("http://") || c.ui_base_url.starts_with("https://");
                if !c.ui_base_url.is_empty() && !web {
                    err(
                        &format!("clusters[{i}].ui_base_url"),
                        format!("`{}` must start with http:// or https://", c.ui_base_url),
                    );
                }
                for (j, n) in c.namespaces.iter().enumerate() {
                    if n.trim().is_empty() {
                        err(
                            &format!("clusters[{i}].namespaces[{j}]"),
                            "must not be empty".into(),
                        );
                    }
                }
            }
            for (i, t) in self.auth.tokens.iter().enumerate() {
                if t.cluster.is_empty() {
                    continue;
                }
                if t.role != "argo-adapter" {
                    err(
                        &format!("auth.tokens[{i}].cluster"),
                        format!(
                            "only argo-adapter tokens are bound to a cluster (this one is `{}`)",
                            t.role
                        ),
                    );
                } else if !known.contains(&t.cluster.as_str()) {
                    err(&format!("auth.tokens[{i}].cluster"), unknown(&t.cluster));
                }
            }
            for (i, c) in self.commands.iter().enumerate() {
                if !c.cluster.is_empty() && !known.contains(&c.cluster.as_str()) {
                    err(&format!("commands[{i}].cluster"), unknown(&c.cluster));
                }
            }
            let codex = &self.codex_implementation_orchestrator.cluster;
            if !codex.is_empty() && !known.contains(&codex.as_str()) {
                err("codex_implementation_orchestrator.cluster", unknown(codex));
            }
            if self.dispatcher.lease_seconds == 0 {
                err("dispatcher.lease_seconds", "must be at least 1".into());
            }
            for (key, value) in [
                ("retention.runs", &self.retention.runs),
                ("retention.audit", &self.retention.audit),
                ("retention.codex_task_runs", &self.retention.codex_task_runs),
            ] {
                if let Err(e) = parse_retention(value) {
                    err(key, e);
                }
            }
            if self.retention.interval_seconds == 0 {
                err("retention.interval_seconds", "must be at least 1".into());
            }
            if self.retention.batch_size == 0 {
                err("retention.batch_size", "must be at least 1".into());
            }
            if self.dispatcher.max_attempts == 0 {
                err("dispatcher.max_attempts", "must be at least 1".into());
            }
            if self.dispatcher.backoff_initial_ms > self.dispatcher.backoff_max_ms {
                err(
                    "dispatcher.backoff_initial_ms",
                    "must not exceed dispatcher.backoff_max_ms".into(),
                );
            }
            for (k, m) in validate_role_map(&self.role_map) {
                err(&k, m);
            }
            validate_commands(&self.commands, &mut err);
            validate_policies(&self.command_policies, &self.commands, &mut err);
            if !["allow", "deny"].contains(&self.discord.default_policy.as_str()) {
                err(
                    "discord.default_policy",
                    format!(
                        "`{}` is not one of allow, deny",
                        self.discord.default_policy
                    ),
                );
            }
        }
        if !["auto", "json", "pretty"].contains(&self.telemetry.log_format.as_str()) {
            err(
                "telemetry.log_format",
                format!(
                    "`{}` is not one of auto, json, pretty",
                    self.telemetry.log_format
                ),
            );
        }
        if matches!(process, Process::DiscordAdapter | Process::ArgoAdapter) {
            let url = &self.control_plane.url;
            if url.is_empty() {
                err(
                    "control_plane.url",
                    "is required (FACTEUR_CONTROL_PLANE_URL)".into(),
                );
            } else if !(url.starts_with("http://") || url.starts_with("https://")) {
                err(
                    "control_plane.url",
                    format!("`{url}` must start with http:// or https://"),
                );
            }
        }
        if process == Process::DiscordAdapter {
            if self.discord.bot_token.is_empty() {
                err(
                    "discord.bot_token",
                    "is required (FACTEUR_DISCORD_BOT_TOKEN)".into(),
                );
            }
            if !is_snowflake(&self.discord.application_id) {
                err(
                    "discord.application_id",
                    "must be a Discord snowflake (17-20 digits)".into(),
                );
            }
            let pk = &self.discord.public_key;
            if self.discord.mode != "gateway"
                && (pk.len() != 64 || !pk.bytes().all(|b| b.is_ascii_hexdigit()))
            {
                err(
                    "discord.public_key",
                    "must be 64 hex characters (the application's Ed25519 key)".into(),
                );
            }
            if !self.discord.guild_id.is_empty() && !is_snowflake(&self.discord.guild_id) {
                err(
                    "discord.guild_id",
                    "must be a Discord snowflake (17-20 digits)".into(),
                );
            }
            if !["http", "gateway"].contains(&self.discord.mode.as_str()) {
                err(
                    "discord.mode",
                    format!("`{}` is not one of http, gateway", self.discord.mode),
                );
            }
            if self
                .discord
                .interactions_listen_address
                .parse::<SocketAddr>()
                .is_err()
            {
                err(
                    "discord.interactions_listen_address",
                    "is not a socket address (host:port)".into(),
                );
            }
        }
        if process == Process::ArgoAdapter && !is_cluster_name(&self.argo.cluster) {
            err(
                "argo.cluster",
                format!(
                    "`{}` is not a cluster name (a DNS label: ^[a-z0-9]([-a-z0-9]*[a-z0-9])?$, at most 63)",
                    self.argo.cluster
                ),
            );
        }
        if process == Process::ArgoAdapter
            && self
                .argo
                .callback_listen_address
                .parse::<SocketAddr>()
                .is_err()
        {
            err(
                "argo.callback_listen_address",
                "is not a socket address (host:port)".into(),
            );
        }
        v
    }
}

fn backend_of(url: &str) -> Option<DatabaseBackend> {
    if url.starts_with("sqlite:") {
        Some(DatabaseBackend::Sqlite)
    } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
        Some(DatabaseBackend::Postgres)
    } else {
        None
    }
}

/// A Discord snowflake as the role-map schema defines it: 17 to 20 digits.
pub fn is_snowflake(s: &str) -> bool {
    (17..=20).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_digit())
}

/// A command name as the role-map schema defines it: `^[a-z0-9:_-]+$`.
pub fn is_command_name(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b":_-".contains(&b))
}

/// Checks a role map against `facteur-discord-role-map.schema.json`: command names match
/// `^[a-z0-9:_-]+$`, each value is a non-empty array of unique snowflakes.
pub fn validate_role_map(map: &BTreeMap<String, Vec<String>>) -> Vec<(String, String)> {
    let mut v = Vec::new();
    for (command, roles) in map {
        let key = format!("role_map.{command}");
        if !is_command_name(command) {
            v.push((
                key.clone(),
                format!("command name `{command}` must match ^[a-z0-9:_-]+$"),
            ));
        }
        if roles.is_empty() {
            v.push((key.clone(), "must list at least one role id".into()));
        }
        let mut seen = std::collections::BTreeSet::new();
        for role in roles {
            if !is_snowflake(role) {
                v.push((
                    key.clone(),
                    format!("role id `{role}` is not a snowflake (^[0-9]{{17,20}}$)"),
                ));
            } else if !seen.insert(role) {
                v.push((key.clone(), format!("role id `{role}` is listed twice")));
            }
        }
    }
    v
}

/// `text` with every occurrence of each secret replaced by `***` (secrets shorter than 6
/// characters are left: masking them would garble ordinary words).
pub fn mask_secrets(text: &str, secrets: &[String]) -> String {
    let mut out = text.to_string();
    for s in secrets.iter().filter(|s| s.len() >= 6) {
        if out.contains(s.as_str()) {
            out = out.replace(s.as_str(), "***");
        }
    }
    out
}

/// The secret parts of a URL: its userinfo password and the values of secret-named query
/// parameters (what [`redact_url`] hides).
fn url_secrets(url: &str) -> Vec<String> {
    let (base, query) = url.split_once('?').unwrap_or((url, ""));
    let mut out = Vec::new();
    if let Some((_, rest)) = base.split_once("://") {
        let authority = rest.split('/').next().unwrap_or("");
        if let Some((userinfo, _)) = authority.rsplit_once('@') {
            out.push(
                userinfo
                    .split_once(':')
                    .map_or(userinfo, |(_, p)| p)
                    .to_string(),
            );
        }
    }
    for kv in query.split('&') {
        if let Some((k, v)) = kv.split_once('=')
            && is_secret_key(k)
        {
            out.push(v.to_string());
        }
    }
    out
}

impl Config {
    /// Every secret this configuration holds (tokens, URL passwords), for [`mask_secrets`].
    pub fn secrets(&self) -> Vec<String> {
        let mut out: Vec<String> = [
            &self.discord.bot_token,
            &self.control_plane.token,
            &self.argo.callback_token,
        ]
        .into_iter()
        .chain(self.auth.tokens.iter().map(|t| &t.token))
        .map(|s| s.expose().to_string())
        .collect();
        for url in [&self.database.url, &self.postgres.dsn, &self.redis.url] {
            out.extend(url_secrets(url.expose()));
        }
        out.retain(|s| !s.is_empty());
        out.sort();
        out.dedup();
        out
    }
}

/// `scheme://user:password@host/…` → `scheme://user:***@host/…`, for logs and `config check`.
pub fn redact_url(url: &str) -> String {
    // Query parameters may carry secrets too (`?password=`, which sqlx and redis accept).
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let mut out = redact_userinfo(base);
    if let Some(q) = query {
        let parts: Vec<String> = q
            .split('&')
            .map(|kv| match kv.split_once('=') {
                Some((k, _)) if is_secret_key(k) => format!("{k}=***"),
                _ => kv.to_string(),
            })
            .collect();
        out.push('?');
        out.push_str(&parts.join("&"));
    }
    out
}

/// Whether a query parameter named `k` holds a secret.
fn is_secret_key(k: &str) -> bool {
    let k = k.to_ascii_lowercase();
    [
        "pass",
        "pwd",
        "token",
        "secret",
        "key",
        "auth",
        "credential",
    ]
    .iter()
    .any(|s| k.contains(s))
}

fn redact_userinfo(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split_once(':').map_or(userinfo, |(u, _)| u);
            let masked = if userinfo.contains(':') {
                format!("{user}:***")
            } else {
                "***".to_string()
            };
            format!("{scheme}://{masked}@{host}{path}")
        }
        None => url.to_string(),
    }
}
