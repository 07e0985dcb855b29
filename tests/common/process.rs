//! The broker as a separate process (the `ringmq` binary this package builds), for tests that
//! need what only a process has: signals, exit codes, its CPU time and open file
//! descriptors, and being killed.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A directory for one test's store, removed when dropped.
pub struct DataDir(pub PathBuf);

impl DataDir {
    /// A fresh, empty directory under the system's temporary directory.
    pub fn new(name: &str) -> DataDir {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("ringmq-test-{name}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create data dir");
        DataDir(dir)
    }

    pub fn path(&self) -> &str {
        self.0.to_str().expect("utf-8 temp path")
    }
}

impl Drop for DataDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A running `ringmq` process; killed on drop if still running.
pub struct BrokerProcess {
    child: Child,
    /// The first listener's address (the plain MQTT listener the harness adds).
    pub addr: SocketAddr,
    /// Every listener's address, in the order of the `--listen` arguments.
    pub addrs: Vec<SocketAddr>,
    /// Everything the broker wrote to stderr so far.
    log: Arc<Mutex<String>>,
    /// The store of a broker started with `start` (the caller owns it with `start_in`).
    _data: Option<DataDir>,
}

impl BrokerProcess {
    /// Starts `ringmq` with a fresh store of its own (removed with it), listening on an
    /// ephemeral loopback port, with the extra `args`.
    pub fn start(args: &[&str]) -> BrokerProcess {
        let data = DataDir::new("broker");
        let mut broker = BrokerProcess::start_in(&data, args);
        broker._data = Some(data);
        broker
    }

    /// Starts `ringmq` on the store in `data` (which outlives it: a restart finds it).
    pub fn start_in(data: &DataDir, args: &[&str]) -> BrokerProcess {
        match BrokerProcess::try_start_in(data, args) {
            Ok(b) => b,
            Err((status, log)) => panic!("ringmq did not start ({status}); its log:\n{log}"),
        }
    }

    /// As `start_in`, but a broker that exits instead of listening gives its exit status
    /// and log.
    pub fn try_start_in(data: &DataDir, args: &[&str]) -> Result<BrokerProcess, (String, String)> {
        let mut all = vec!["--listen", "127.0.0.1:0"];
        all.extend_from_slice(args);
        BrokerProcess::try_start_raw(data, &all)
    }

    /// Starts `ringmq` with the TOML `config` (written into the store's directory) and the
    /// extra `args`, and no listener but the config's (or the args'); `addrs` are the
    /// listeners in config order.
    pub fn start_config(config: &str, args: &[&str]) -> BrokerProcess {
        let data = DataDir::new("broker");
        let file = data.0.join("ringmq.toml");
        std::fs::write(&file, config).expect("write config");
        let file = file.to_str().expect("utf-8 path").to_owned();
        let mut all = vec!["--config", file.as_str()];
        all.extend_from_slice(args);
        match BrokerProcess::try_start_raw(&data, &all) {
            Ok(mut b) => {
                b._data = Some(data);
                b
            }
            Err((status, log)) => panic!("ringmq did not start ({status}); its log:\n{log}"),
        }
    }

    /// As `try_start_in`, with exactly `args` (no listener added).
    pub fn try_start_raw(data: &DataDir, args: &[&str]) -> Result<BrokerProcess, (String, String)> {
        // RINGMQ_TEST_BROKER runs another build instead (to show that a test fails on it).
        let binary = std::env::var_os("RINGMQ_TEST_BROKER")
            .unwrap_or_else(|| env!("CARGO_BIN_EXE_ringmq").into());
        let mut child = Command::new(binary)
            .args(["--no-pin", "--data-dir", data.path()])
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("ringmq starts");
        let started = Instant::now();
        let stderr = child.stderr.take().expect("stderr piped");
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let sink = Arc::clone(&log);
        std::thread::spawn(move || {
            let mut sent = false;
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                // `listening on 127.0.0.1:41234 (mqtt), 127.0.0.1:41235 (mqtts), ...`
                if !sent && let Some(rest) = line.split("listening on ").nth(1) {
                    let addrs: Vec<String> = rest
                        .split(',')
                        .filter_map(|l| l.split_whitespace().next())
                        .map(str::to_owned)
                        .collect();
                    let _ = tx.send(addrs);
                    sent = true;
                }
                let mut log = sink.lock().unwrap_or_else(|e| e.into_inner());
                log.push_str(&line);
                log.push('\n');
            }
        });
        let addrs: Vec<SocketAddr> = loop {
            match rx.recv_timeout(Duration::from_millis(50)) {
                Ok(addrs) => {
                    break addrs
                        .iter()
                        .map(|a| a.parse().expect("listen address"))
                        .collect();
                }
                Err(_) => {
                    if let Ok(Some(status)) = child.try_wait() {
                        // Let the reader thread take the last lines.
                        std::thread::sleep(Duration::from_millis(100));
                        let log = log.lock().unwrap_or_else(|e| e.into_inner()).clone();
                        return Err((status.to_string(), log));
                    }
                    if started.elapsed() > Duration::from_secs(60) {
                        let _ = child.kill();
                        let log = log.lock().unwrap_or_else(|e| e.into_inner()).clone();
                        return Err(("no listener within 60 s".to_owned(), log));
                    }
                }
            }
        };
        Ok(BrokerProcess {
            child,
            addr: addrs[0],
            addrs,
            log,
            _data: None,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The broker's stderr so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// User + system CPU time the process used so far, in clock ticks (1/100 s).
    pub fn cpu_ticks(&self) -> u64 {
        let stat =
            std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).expect("/proc/PID/stat");
        // Fields after the command name, which is in parentheses and may hold spaces.
        let rest = &stat[stat.rfind(')').expect("comm") + 2..];
        let fields: Vec<&str> = rest.split_whitespace().collect();
        // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
        let utime: u64 = fields[11].parse().expect("utime");
        let stime: u64 = fields[12].parse().expect("stime");
        utime + stime
    }

    /// CPU the process uses over `window`, in percent of one core.
    pub fn cpu_percent_over(&self, window: Duration) -> f64 {
        let before = self.cpu_ticks();
        std::thread::sleep(window);
        let after = self.cpu_ticks();
        (after - before) as f64 / window.as_secs_f64()
    }

    /// The process's resident set size in KiB (VmRSS).
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .expect("/proc/PID/status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .expect("VmRSS")
    }

    /// File descriptors the process holds open.
    pub fn open_fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .map(|d| d.count())
            .unwrap_or(0)
    }

    /// Sends `signal` to the process.
    pub fn signal(&self, signal: i32) {
        // SAFETY: plain syscall with integer arguments on our own child's pid.
        unsafe {
            libc::kill(self.pid() as i32, signal);
        }
    }

    /// Waits up to `limit` for the process to exit; `None` if it is still running.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let start = Instant::now();
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            if start.elapsed() >= limit {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM, then waits up to `limit`; returns the exit status (the test fails with the
    /// broker's log if it does not exit in time).
    pub fn terminate(mut self, limit: Duration) -> ExitStatus {
        self.signal(libc::SIGTERM);
        match self.wait_exit(limit) {
            Some(status) => status,
            None => {
                let log = self.log();
                let _ = self.child.kill();
                let tail: Vec<&str> = log.lines().rev().take(30).collect();
                panic!(
                    "ringmq did not exit within {limit:?} of SIGTERM; last log lines:\n{}",
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                );
            }
        }
    }

    /// SIGKILL and reap.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for BrokerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
