//! The `ringmq` binary: command line and configuration, then the shard runtime until
//! SIGINT/SIGTERM.
//!
//! Must never: panic on bad input (every error is a message and exit code 2, or 1 when the
//! broker fails at run time).

use std::process::ExitCode;

use ringmq::config::{Command, USAGE, parse_args};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
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
        Err(e) => {
            eprintln!("ringmq: {e}");
            return ExitCode::from(2);
        }
    };
    let driver = std::env::var("RINGMQ_DRIVER").ok();
    if let Err(e) = config.apply_env(driver.as_deref()) {
        eprintln!("ringmq: {e}");
        return ExitCode::from(2);
    }
    let listen: Vec<String> = config.listen.iter().map(|a| a.to_string()).collect();
    ringmq::log!(
        INFO,
        None,
        "ringmq {} starting: listen {}, {} shard(s), driver {:?}",
        env!("CARGO_PKG_VERSION"),
        listen.join(", "),
        config.effective_shards(),
        config.driver
    );
    match ringmq::shard::run(config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ringmq: {e}");
            ExitCode::from(1)
        }
    }
}
