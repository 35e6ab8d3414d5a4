//! Configuration shared by the three facteur processes (their runtime, telemetry and start-up
//! are `facteur-runtime`'s).
//!
//! ```text
//!  defaults ──▶ YAML file (--config / FACTEUR_CONFIG_FILE) ──▶ FACTEUR_* environment ──▶ validate()
//! ```
//!
//! Every key `a.b_c` is also settable as `FACTEUR_A_B_C` (the environment wins over the file);
//! the old service's names keep working (wire-compat.md §6). Map- and list-valued keys take JSON
//! in the environment. Unknown keys and invalid values are reported all at once, each naming its
//! key. Each process validates only the keys it uses ([`Process`]).

pub mod discord;
mod load;
pub mod model;

pub use load::{ConfigError, ConfigErrors, ENV_ALIASES, all_keys, env_name, load, load_from};
pub use model::*;
