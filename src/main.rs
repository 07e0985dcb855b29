//! The `ringmq` binary: command line and configuration, then the shard runtime until
//! SIGINT/SIGTERM (SIGHUP reloads the password and ACL files); or `ringmq passwd`, which
//! edits a password file and exits; or `ringmq reload --pid PID`, which sends SIGHUP.
//!
//! Must never: panic on bad input (every error is a message and exit code 2: settings,
//! listener files, an address that cannot be bound; or 1 when the broker fails at run
//! time, e.g. a store it cannot use).
#![deny(unsafe_code)]

use std::process::ExitCode;

use ringmq::config::{Command, USAGE, parse_args};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `mi_option_purge_delay` in mimalloc's `mi_option_t` (the same index in its v2 and v3
/// headers; `libmimalloc-sys` does not name it).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Milliseconds mimalloc waits before it returns freed pages to the OS. A due purge is only
/// acted on at a later allocation or free, which an idle broker does not make: with the
/// default (1 s, times 10 for arenas) and with 100 ms the memory freed while 5,000
/// connections were set up stayed resident (about 0.6 KB per connection). 0 returned it but
/// cost about 11% of fan-in throughput; 10 returned the same and its throughput was within
/// run-to-run noise (README "Idle memory").
const PURGE_DELAY_MS: std::ffi::c_long = 10;

/// Sets mimalloc's purge delay unless `MIMALLOC_PURGE_DELAY` is in the environment (then
/// mimalloc reads that, which keeps the setting open to measurement).
#[allow(unsafe_code)] // one FFI call, below
fn set_allocator_options() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: `mi_option_set` only stores an integer option; mimalloc reads options on
        // demand, so setting one at any time is allowed.
        unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, PURGE_DELAY_MS) };
    }
}

fn main() -> ExitCode {
    let code = run();
    // Lines still in the logger's queue reach stderr before the process ends.
    ringmq::log::flush();
    code
}

/// The queued log lines first, then `message` on stderr (so that it comes last), then the
/// exit code.
fn fail(message: std::fmt::Arguments<'_>, code: u8) -> ExitCode {
    ringmq::log::flush();
    eprintln!("{message}");
    ExitCode::from(code)
}

fn run() -> ExitCode {
    set_allocator_options();
    // Before the shards touch their heaps: see `disable_transparent_huge_pages`.
    if let Err(e) = ringmq::shard::sys::disable_transparent_huge_pages() {
        ringmq::log!(WARN, None, "cannot turn transparent huge pages off: {e}");
    }
    let mut config = match parse_args(std::env::args().skip(1)) {
        Ok(Command::Run(config)) => *config,
        Ok(Command::Help) => {
            print!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Ok(Command::Version) => {
            println!("ringmq {}", env!("CARGO_PKG_VERSION"));
            return ExitCode::SUCCESS;
        }
        Ok(Command::Reload { pid }) => {
            return match ringmq::shard::sys::send_reload_signal(pid) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => fail(
                    format_args!("ringmq reload: cannot signal process {pid}: {e}"),
                    1,
                ),
            };
        }
        Ok(Command::Passwd(args)) => {
            return match ringmq::auth::passwd::run(&args) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => fail(format_args!("ringmq passwd: {e}"), 1),
            };
        }
        Err(e) => return fail(format_args!("ringmq: {e}"), 2),
    };
    ringmq::log::set_level(config.ops.log_level);
    ringmq::log::set_format(config.ops.log_format);
    // A shard that panics takes the process down (logged, SIGABRT). Installed before the
    // store is opened: the store contains redb's panics on the starting thread, which the
    // hook passes on (it aborts only for shard threads).
    ringmq::shard::panic::install_abort_on_shard_panic();
    let driver = std::env::var("RINGMQ_DRIVER").ok();
    if let Err(e) = config.apply_env(driver.as_deref()) {
        return fail(format_args!("ringmq: {e}"), 2);
    }
    // Every listener's files are loaded and checked before any listener opens, so that a
    // missing or mismatched certificate stops the start with a message naming it; the
    // loaded listeners go to the shards.
    let runtimes = match ringmq::transport::ListenerRuntime::load_all(&config) {
        Ok(runtimes) => runtimes,
        Err(e) => return fail(format_args!("ringmq: {e}"), 2),
    };
    let listen: Vec<String> = config.listeners.iter().map(|l| l.url.to_string()).collect();
    ringmq::log!(
        INFO,
        None,
        "ringmq {} starting: listen {}, {} shard(s), driver {:?}",
        env!("CARGO_PKG_VERSION"),
        listen.join(", "),
        config.effective_shards(),
        config.driver
    );
    match ringmq::shard::run(config, runtimes) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(format_args!("ringmq: {e}"), e.exit_code()),
    }
}
