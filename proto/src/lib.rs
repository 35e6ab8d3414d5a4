//! The facteur contract, generated from `proto/` and nowhere else.
//!
//! - [`v1`]: the `facteur.v1` API (`CommandService`, `CodexService`, `DispatchService`,
//!   `AdminService`) served by the control plane;
//! - [`froussard`] and [`legacy`]: the wire-compatible messages existing producers send
//!   (`proompteng.froussard.v1.CodexTask`, `proompteng.facteur.v1.CommandEvent`);
//! - [`FILE_DESCRIPTOR_SET`]: every descriptor, imports included, for server reflection.
//!
//! Modules nest like the protobuf packages because generated code refers across packages with
//! `super::super::…` paths.

/// Package `facteur.*`.
pub mod facteur {
    /// Package `facteur.v1`.
    pub mod v1 {
        tonic::include_proto!("facteur.v1");
    }
}

/// Package `proompteng.*` (wire-compatible legacy messages).
pub mod proompteng {
    /// Package `proompteng.froussard.*`.
    pub mod froussard {
        /// Package `proompteng.froussard.v1`.
        pub mod v1 {
            tonic::include_proto!("proompteng.froussard.v1");
        }
    }
    /// Package `proompteng.facteur.*`.
    pub mod facteur {
        /// Package `proompteng.facteur.v1`.
        pub mod v1 {
            tonic::include_proto!("proompteng.facteur.v1");
        }
    }
}

pub use facteur::v1;
/// `proompteng.facteur.v1`: the CommandEvent of the old Discord front end.
pub use proompteng::facteur::v1 as legacy;
/// `proompteng.froussard.v1`: the CodexTask that froussard publishes.
pub use proompteng::froussard::v1 as froussard;

/// Encoded `FileDescriptorSet` of every file above, for `tonic-reflection`.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/facteur_descriptor.bin"));

/// Fully qualified names of the four `facteur.v1` services.
pub const SERVICE_NAMES: [&str; 4] = [
    "facteur.v1.CommandService",
    "facteur.v1.CodexService",
    "facteur.v1.DispatchService",
    "facteur.v1.AdminService",
];
