//! Bearer-token authentication and per-service role authorization of the gRPC API.
//!
//! Tokens are configured per principal with a role. Every service but health and reflection
//! runs behind [`interceptor`]: a missing or unknown token is UNAUTHENTICATED, a known token of a
//! role the service does not accept is PERMISSION_DENIED. Tokens are compared in constant time
//! and never logged; only the principal's name is.

use facteur_config::AuthConfig;
use std::sync::Arc;
use subtle::ConstantTimeEq;
use tonic::{Request, Status};

/// The roles of the API.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// The discord-adapter: CommandService.
    DiscordAdapter,
    /// The argo-adapter: DispatchService.
    ArgoAdapter,
    /// Services submitting Codex tasks: CodexService.
    CodexSubmitter,
    /// Operators: AdminService, all of CodexService (submitting a task by hand, to replay one,
    /// included) and `POST /events`. docs/operations.md "Roles" is the same table.
    Admin,
}

impl Role {
    /// Parses a configured role name.
    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "discord-adapter" => Some(Role::DiscordAdapter),
            "argo-adapter" => Some(Role::ArgoAdapter),
            "codex-submitter" => Some(Role::CodexSubmitter),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }
    /// Configured name.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::DiscordAdapter => "discord-adapter",
            Role::ArgoAdapter => "argo-adapter",
            Role::CodexSubmitter => "codex-submitter",
            Role::Admin => "admin",
        }
    }
}

/// Roles each service accepts.
pub mod allowed {
    use super::Role;
    /// CommandService.
    pub const COMMAND: &[Role] = &[Role::DiscordAdapter];
    /// CodexService.
    pub const CODEX: &[Role] = &[Role::CodexSubmitter, Role::Admin];
    /// DispatchService.
    pub const DISPATCH: &[Role] = &[Role::ArgoAdapter];
    /// AdminService.
    pub const ADMIN: &[Role] = &[Role::Admin];
    /// `POST /events` (legacy CommandEvents from the Discord front end).
    pub const EVENTS: &[Role] = &[Role::DiscordAdapter, Role::Admin];
}

/// The authenticated caller, put in the request extensions for handlers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal {
    /// Token name (`local` when auth is off).
    pub name: String,
    /// Its role (`None` when auth is off: everything is allowed on loopback).
    pub role: Option<Role>,
    /// The one cluster an argo-adapter token may act for (`auth.tokens[].cluster`); `None`:
    /// any.
    pub cluster: Option<String>,
}

impl Principal {
    /// The caller of a request that went through [`interceptor`].
    pub fn of<T>(req: &Request<T>) -> Principal {
        req.extensions()
            .get::<Principal>()
            .cloned()
            .unwrap_or_else(|| Principal {
                name: "local".into(),
                role: None,
                cluster: None,
            })
    }
}

/// Why a token was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum AuthError {
    /// No `authorization` header.
    Missing,
    /// Not `Bearer <token>`.
    Malformed,
    /// No principal has this token.
    Unknown,
    /// The principal's role may not call this service.
    Forbidden {
        /// Principal name.
        principal: String,
        /// Its role.
        role: Role,
    },
}

impl From<AuthError> for Status {
    fn from(e: AuthError) -> Status {
        match e {
            AuthError::Missing => Status::unauthenticated(
                "missing authorization header: send `authorization: Bearer <token>`",
            ),
            AuthError::Malformed => {
                Status::unauthenticated("authorization header must be `Bearer <token>`")
            }
            AuthError::Unknown => Status::unauthenticated("unknown bearer token"),
            AuthError::Forbidden { principal, role } => Status::permission_denied(format!(
                "principal `{principal}` has role `{}`, which may not call this service",
                role.as_str()
            )),
        }
    }
}

/// The configured tokens.
pub struct Authenticator {
    /// (name, role, token, bound cluster).
    tokens: Vec<(String, Role, Vec<u8>, Option<String>)>,
}

impl Authenticator {
    /// From `auth.tokens` (already validated: roles are known).
    pub fn from_config(cfg: &AuthConfig) -> Self {
        let tokens = cfg
            .tokens
            .iter()
            .filter_map(|t| {
                Role::parse(&t.role).map(|r| {
                    (
                        t.name.clone(),
                        r,
                        t.token.expose().as_bytes().to_vec(),
                        (!t.cluster.is_empty()).then(|| t.cluster.clone()),
                    )
                })
            })
            .collect();
        Self { tokens }
    }

    /// Whether any token is configured.
    pub fn enabled(&self) -> bool {
        !self.tokens.is_empty()
    }

    /// Checks an `authorization` header value against `allowed` roles.
    pub fn authorize(
        &self,
        header: Option<&[u8]>,
        allowed: &[Role],
    ) -> Result<Principal, AuthError> {
        if !self.enabled() {
            return Ok(Principal {
                name: "local".into(),
                role: None,
                cluster: None,
            });
        }
        let header = header.ok_or(AuthError::Missing)?;
        let token = header
            .strip_prefix(b"Bearer ")
            .or_else(|| header.strip_prefix(b"bearer "))
            .map(|t| t.trim_ascii())
            .filter(|t| !t.is_empty())
            .ok_or(AuthError::Malformed)?;
        // Compare against every token without an early exit, so timing says nothing about
        // which (or whether a) prefix matched.
        let mut found: Option<(&str, Role, &Option<String>)> = None;
        for (name, role, t, cluster) in &self.tokens {
            if bool::from(t.as_slice().ct_eq(token)) {
                found = Some((name, *role, cluster));
            }
        }
        let (name, role, cluster) = found.ok_or(AuthError::Unknown)?;
        if !allowed.contains(&role) {
            return Err(AuthError::Forbidden {
                principal: name.to_string(),
                role,
            });
        }
        Ok(Principal {
            name: name.to_string(),
            role: Some(role),
            cluster: cluster.clone(),
        })
    }
}

/// A tonic interceptor admitting only `allowed` roles; puts the [`Principal`] in the extensions.
pub fn interceptor(
    auth: Arc<Authenticator>,
    allowed: &'static [Role],
) -> impl FnMut(Request<()>) -> Result<Request<()>, Status> + Clone {
    move |mut req: Request<()>| {
        let header = req.metadata().get("authorization").map(|v| v.as_bytes());
        let principal = auth.authorize(header, allowed).map_err(|e| {
            tracing::debug!(reason = ?std::mem::discriminant(&e), "request refused by auth");
            Status::from(e)
        })?;
        req.extensions_mut().insert(principal);
        Ok(req)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use facteur_config::{Secret, TokenConfig};

    fn auth() -> Authenticator {
        Authenticator::from_config(&AuthConfig {
            tokens: vec![
                TokenConfig {
                    cluster: String::new(),
                    name: "ops".into(),
                    role: "admin".into(),
                    token: Secret("admin-token-0123456789".into()),
                },
                TokenConfig {
                    cluster: String::new(),
                    name: "argo".into(),
                    role: "argo-adapter".into(),
                    token: Secret("argo-token-0123456789".into()),
                },
            ],
        })
    }

    /// The roles table of docs/operations.md, pinned.
    #[test]
    fn each_role_reaches_exactly_its_services() {
        use Role::*;
        let table: [(&[Role], &[Role]); 5] = [
            (allowed::COMMAND, &[DiscordAdapter]),
            (allowed::CODEX, &[CodexSubmitter, Admin]),
            (allowed::DISPATCH, &[ArgoAdapter]),
            (allowed::ADMIN, &[Admin]),
            (allowed::EVENTS, &[DiscordAdapter, Admin]),
        ];
        for (service, roles) in table {
            assert_eq!(service, roles);
        }
    }

    #[test]
    fn codes_for_each_refusal() {
        let a = auth();
        assert_eq!(a.authorize(None, allowed::ADMIN), Err(AuthError::Missing));
        assert_eq!(
            a.authorize(Some(b"Basic xyz"), allowed::ADMIN),
            Err(AuthError::Malformed)
        );
        assert_eq!(
            a.authorize(Some(b"Bearer "), allowed::ADMIN),
            Err(AuthError::Malformed)
        );
        assert_eq!(
            a.authorize(Some(b"Bearer admin-token-012345678"), allowed::ADMIN),
            Err(AuthError::Unknown)
        );
        assert_eq!(
            a.authorize(Some(b"Bearer argo-token-0123456789"), allowed::ADMIN),
            Err(AuthError::Forbidden {
                principal: "argo".into(),
                role: Role::ArgoAdapter
            })
        );
        let p = a
            .authorize(Some(b"Bearer admin-token-0123456789"), allowed::ADMIN)
            .expect("admin allowed");
        assert_eq!(p.name, "ops");
        assert_eq!(
            tonic::Code::Unauthenticated,
            Status::from(AuthError::Unknown).code()
        );
        assert_eq!(
            tonic::Code::PermissionDenied,
            Status::from(AuthError::Forbidden {
                principal: "x".into(),
                role: Role::Admin
            })
            .code()
        );
    }

    #[test]
    fn auth_off_allows_everything() {
        let a = Authenticator::from_config(&AuthConfig::default());
        assert!(!a.enabled());
        assert_eq!(
            a.authorize(None, allowed::DISPATCH).map(|p| p.name),
            Ok("local".to_string())
        );
    }

    #[test]
    fn refusal_messages_never_echo_the_token() {
        let a = auth();
        for header in [
            &b"Bearer secret-guess-0123456789"[..],
            b"Bearer argo-token-0123456789",
        ] {
            if let Err(e) = a.authorize(Some(header), allowed::ADMIN) {
                let s = Status::from(e);
                assert!(
                    !s.message().contains("secret-guess") && !s.message().contains("argo-token"),
                    "{}",
                    s.message()
                );
            }
        }
    }
}
