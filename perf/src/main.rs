//! `ringmq-bench`: an MQTT load generator for RingMQ or any other broker.
//!
//! Map: `cli` (arguments), `plan` (who talks to whom, shared counters), `worker` (one epoll loop
//! per thread), `traffic` (load models, QoS flows, accounting per delivery), `wire` (its own
//! small MQTT codec), `payload` (the header in every message), `accounting` (loss, duplicates,
//! reordering), `report` (table and JSON), `run` (the main thread's timeline), `sys` (libc),
//! `link` (its own TLS client use and WebSocket framing for `--tls` / `--ws`), `probe`
//! (PINGRESP latency of a bystander client during a run), `sn` (the `mqttsn` scenario: MQTT-SN
//! publishers over UDP, self-contained), `subs` (the subscriptions
//! scenario).

mod accounting;
mod cli;
mod link;
mod payload;
mod plan;
mod probe;
mod report;
mod run;
mod sn;
mod subs;
mod sys;
mod traffic;
mod wire;
mod worker;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().is_some_and(|a| a == "mqttsn") {
        match sn::main(&args[1..]) {
            Ok(status) => std::process::exit(status),
            Err(msg) => {
                eprintln!("ringmq-bench: {msg}");
                std::process::exit(1);
            }
        }
    }
    let cfg = match cli::parse(&args) {
        Ok(Some(cfg)) => cfg,
        Ok(None) => {
            print!("{}", cli::USAGE);
            return;
        }
        Err(msg) => {
            eprintln!("ringmq-bench: {msg}");
            std::process::exit(1);
        }
    };
    // 15k+ connections need more than the usual soft limit of 1024 descriptors.
    match sys::raise_nofile_limit() {
        Ok(limit) if (limit as usize) < cfg.total_connections() + 64 => {
            eprintln!(
                "ringmq-bench: warning: {} connections but only {limit} file descriptors allowed",
                cfg.total_connections()
            );
        }
        Ok(_) => {}
        Err(e) => eprintln!("ringmq-bench: warning: could not raise RLIMIT_NOFILE: {e}"),
    }
    match run::run(cfg) {
        Ok(status) => std::process::exit(status),
        Err(msg) => {
            eprintln!("ringmq-bench: {msg}");
            std::process::exit(1);
        }
    }
}
