//! The tokio runtime every facteur process runs on, and what it asks of the allocator.
//!
//! The server (and the benches) allocate with mimalloc. mimalloc keeps the pages a thread freed
//! — and the blocks other threads freed into that thread's pages — in that thread's own queues,
//! and gives them back to the system only when that thread next calls into it: a worker that
//! goes idle after a burst (a few 4 MiB CodexTasks, say) would hold its share until the next
//! request — 5–6 MiB above idle for good (BENCHMARKS.md, issue #19). So each worker, when it
//! parks (it has nothing left to run), collects its free pages and lets mimalloc purge them at
//! once. The adapters allocate with glibc's malloc: there a worker's mimalloc heap was never
//! used and the collection returns at once.

use std::io;

/// A multi-threaded runtime with every driver enabled whose workers give back, when they go
/// idle, the memory they freed. Purging is immediate unless `MIMALLOC_PURGE_DELAY` says
/// otherwise.
pub fn build() -> io::Result<tokio::runtime::Runtime> {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        purge_at_once();
    }
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .on_thread_park(give_back)
        .build()
}

/// `mi_option_purge_delay`, which libmimalloc-sys does not name: its place in `mi_option_e`
/// (mimalloc.h, v3 as libmimalloc-sys 0.1.49 builds it; the same place in v2).
const PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Freed pages are purged when collected, not after mimalloc's delay (1 s by default), which
/// only passes while the process keeps calling into the allocator.
#[allow(unsafe_code)]
fn purge_at_once() {
    // SAFETY: sets one of mimalloc's global options (a plain integer; no pointer involved).
    // Called before the runtime starts its threads.
    unsafe { libmimalloc_sys::mi_option_set(PURGE_DELAY, 0) }
}

/// Collects what this thread's heap holds free (pages whose every block was freed, by this
/// thread or another) and purges it. Not forced: pages still in use and full pages are not
/// visited, so it costs little when the worker has little to give back.
#[allow(unsafe_code)]
fn give_back() {
    // SAFETY: mimalloc's collection of the calling thread's own heap; it takes no argument
    // besides the flag and is safe to call at any time from any thread.
    unsafe { libmimalloc_sys::mi_collect(false) }
}

#[cfg(test)]
mod tests {
    #![allow(unsafe_code)]

    /// [`super::PURGE_DELAY`] is the option mimalloc reads from `MIMALLOC_PURGE_DELAY`: this
    /// test runs itself again with the variable set, and the child reads the option back.
    #[test]
    fn purge_delay_is_the_option_mimalloc_reads_from_its_environment() {
        const CHILD: &str = "FACTEUR_TEST_PURGE_DELAY_CHILD";
        if std::env::var_os(CHILD).is_some() {
            // SAFETY: reads one of mimalloc's global options.
            let read = unsafe { libmimalloc_sys::mi_option_get(super::PURGE_DELAY) };
            assert_eq!(
                read,
                4321,
                "option {} is not the purge delay",
                super::PURGE_DELAY
            );
            return;
        }
        let out = std::process::Command::new(std::env::current_exe().expect("test binary"))
            .args([
                "--exact",
                "runtime::tests::purge_delay_is_the_option_mimalloc_reads_from_its_environment",
                "--nocapture",
            ])
            .env(CHILD, "1")
            .env("MIMALLOC_PURGE_DELAY", "4321")
            .output()
            .expect("run the test binary");
        let said = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{said}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(said.contains("1 passed"), "the child ran no test: {said}");
    }

    /// Work runs on the built runtime, and its workers park (running the hook) and wake again.
    #[test]
    fn the_runtime_runs_work_across_parks() {
        let rt = super::build().expect("runtime");
        let sum = rt.block_on(async {
            let mut total = 0u64;
            for i in 0..20u64 {
                tokio::time::sleep(std::time::Duration::from_millis(1)).await;
                total += tokio::spawn(async move { vec![i; 1 << 16].iter().sum::<u64>() })
                    .await
                    .expect("task");
            }
            total
        });
        assert_eq!(sum, (0..20u64).map(|i| i << 16).sum::<u64>());
    }
}
