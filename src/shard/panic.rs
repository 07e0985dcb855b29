//! What a panic on a shard thread does to the process: it is logged and the process aborts
//! (a non-zero exit, SIGABRT), because a shard that stops leaves its clients, their
//! sessions and every other shard's envelopes to it without an owner.
//!
//! Owns: the process's panic hook (installed by `main`) and the policy of which threads it
//! aborts for: the shard threads, named `ringmq-shard-N` (`SHARD_THREAD_PREFIX`). A panic
//! on another thread goes to the previous hook unchanged: panics that are contained on
//! purpose stay contained (redb's panics on a damaged store, caught inside
//! `ringmq_storage::Store::open` on the starting thread; a verifier job; the storage writer,
//! whose end the shards see as a failing store).
//!
//! Must never: abort for a thread that is not a shard, or lose the panic's line (it is
//! written straight to stderr after the queued lines are flushed).

/// The name of shard thread `i` is this prefix followed by `i` (see `shard::start`).
pub const SHARD_THREAD_PREFIX: &str = "ringmq-shard-";

/// Whether a thread called `name` is a shard thread (the hook aborts for those).
pub fn is_shard_thread(name: Option<&str>) -> bool {
    name.and_then(|n| n.strip_prefix(SHARD_THREAD_PREFIX))
        .is_some_and(|rest| !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_digit()))
}

/// Installs the hook: a panic on a shard thread is logged (after every line queued before
/// it) and aborts the process; any other panic goes to the hook installed before.
pub fn install_abort_on_shard_panic() {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let thread = std::thread::current();
        let name = thread.name();
        if !is_shard_thread(name) {
            previous(info);
            return;
        }
        let shard = name
            .and_then(|n| n.strip_prefix(SHARD_THREAD_PREFIX))
            .and_then(|i| i.parse().ok());
        let message = info
            .payload()
            .downcast_ref::<&str>()
            .copied()
            .or_else(|| info.payload().downcast_ref::<String>().map(String::as_str))
            .unwrap_or("a panic without a message");
        let location = info
            .location()
            .map_or_else(String::new, |l| format!(" at {l}"));
        crate::log::flush();
        crate::log::write_direct(
            crate::log::Level::Error,
            shard,
            format_args!(
                "shard thread panicked{location}: {message}; aborting the process \
                 (its clients and sessions have no owner any more)"
            ),
        );
        std::process::abort();
    }));
}

#[cfg(test)]
mod tests {
    use super::is_shard_thread;

    #[test]
    fn only_shard_threads() {
        assert!(is_shard_thread(Some("ringmq-shard-0")));
        assert!(is_shard_thread(Some("ringmq-shard-63")));
        for other in [
            None,
            Some("main"),
            Some("ringmq-shard-"),
            Some("ringmq-shard-x"),
            Some("ringmq-log"),
            Some("ringmq-storage"),
        ] {
            assert!(!is_shard_thread(other), "{other:?}");
        }
    }
}
