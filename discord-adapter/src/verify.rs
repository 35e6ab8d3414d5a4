//! Discord's request signatures: Ed25519 over `timestamp ‖ raw body` with the application's
//! public key, plus a freshness window (Discord does not require one; replays are the risk).

use ed25519_dalek::{Signature, Verifier as _, VerifyingKey};

/// How far a request's timestamp may be from our clock.
pub const WINDOW_SECONDS: i64 = 300;

/// Why a request was refused (all answered 401).
#[derive(Debug, PartialEq, Eq)]
pub enum Refusal {
    /// A header is missing.
    Missing,
    /// A header is not well-formed (signature not 128 hex characters, timestamp not a number).
    Malformed,
    /// The signature does not match.
    BadSignature,
    /// The timestamp is outside the window.
    Stale,
}

/// The application's public key.
#[derive(Clone)]
pub struct Verifier(VerifyingKey);

fn hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

impl Verifier {
    /// From the 64-hex-character key of the Developer Portal.
    pub fn new(public_key_hex: &str) -> anyhow::Result<Verifier> {
        let bytes: [u8; 32] = hex(public_key_hex)
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| anyhow::anyhow!("discord.public_key is not 64 hex characters"))?;
        Ok(Verifier(VerifyingKey::from_bytes(&bytes).map_err(|e| {
            anyhow::anyhow!("discord.public_key is not a valid Ed25519 key: {e}")
        })?))
    }

    /// Checks one request.
    pub fn check(
        &self,
        signature: Option<&str>,
        timestamp: Option<&str>,
        body: &[u8],
        now_unix: i64,
    ) -> Result<(), Refusal> {
        let (sig, ts) = (
            signature.ok_or(Refusal::Missing)?,
            timestamp.ok_or(Refusal::Missing)?,
        );
        if sig.len() != 128 {
            return Err(Refusal::Malformed);
        }
        let sig: [u8; 64] = hex(sig)
            .and_then(|b| b.try_into().ok())
            .ok_or(Refusal::Malformed)?;
        let when: i64 = ts.parse().map_err(|_| Refusal::Malformed)?;
        let mut message = Vec::with_capacity(ts.len() + body.len());
        message.extend_from_slice(ts.as_bytes());
        message.extend_from_slice(body);
        self.0
            .verify(&message, &Signature::from_bytes(&sig))
            .map_err(|_| Refusal::BadSignature)?;
        if (now_unix - when).abs() > WINDOW_SECONDS {
            return Err(Refusal::Stale);
        }
        Ok(())
    }
}
