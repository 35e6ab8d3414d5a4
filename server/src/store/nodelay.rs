//! `TCP_NODELAY` on the Postgres connections.
//!
//! sqlx opens its sockets itself and never sets `TCP_NODELAY`, and over TLS it writes each TLS
//! record (16 KiB) with a write of its own. With Nagle's algorithm on, every record after the
//! first of one statement then waits for Postgres to acknowledge the previous one, and Postgres
//! delays that ACK (~40 ms) because it is still waiting for the rest of the statement. Any
//! statement larger than one record (a batch of Codex deliveries, or one delivery with a long
//! prompt) would stall for 40 ms.
//!
//! There is no hook to reach sqlx's socket, so after each connection is made, the process's own
//! TCP sockets connected to the database's port get `TCP_NODELAY` (Linux: listed in
//! `/proc/self/fd`). Setting it on a socket that has it already changes nothing.
#![allow(unsafe_code)]

/// Sets `TCP_NODELAY` on this process's TCP sockets whose peer port is `port`; how many were
/// changed. Elsewhere than Linux, nothing.
pub fn set_on_sockets_to(port: u16) -> usize {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::{BorrowedFd, RawFd};
        let Ok(dir) = std::fs::read_dir("/proc/self/fd") else {
            return 0;
        };
        let mut changed = 0;
        for entry in dir.flatten() {
            let Some(fd) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<RawFd>().ok())
            else {
                continue;
            };
            // Only sockets: the link of a socket descriptor reads `socket:[inode]`.
            let is_socket = std::fs::read_link(entry.path())
                .is_ok_and(|t| t.to_string_lossy().starts_with("socket:"));
            if !is_socket {
                continue;
            }
            // SAFETY: `fd` was listed as open by this process a moment ago and is only used for
            // getsockopt/getpeername/setsockopt during this call; it is never closed here. If
            // another thread closed it in between, these calls fail with EBADF (or, if the
            // number was reused at once, set TCP_NODELAY on another socket, which is harmless).
            let fd = unsafe { BorrowedFd::borrow_raw(fd) };
            let sock = socket2::SockRef::from(&fd);
            let to_port = sock
                .peer_addr()
                .ok()
                .and_then(|a| a.as_socket())
                .is_some_and(|a| a.port() == port);
            if to_port
                && sock.tcp_nodelay().is_ok_and(|on| !on)
                && sock.set_tcp_nodelay(true).is_ok()
            {
                changed += 1;
            }
        }
        changed
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = port;
        0
    }
}
