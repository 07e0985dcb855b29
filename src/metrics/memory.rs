//! The process's memory as the kernel sees it, for `$SYS/broker/heap/*` and Prometheus:
//! resident set size (`VmRSS`) and its peak (`VmHWM`) from `/proc/self/status`. RingMQ keeps
//! no count of its own allocations (mosquitto's `heap/*` are such a count), and resident
//! memory is the figure an operator compares with the machine's: it is what is published,
//! under mosquitto's names, and documented as such.
//!
//! Must never: be read per message (it is a file read: once per `$SYS` publication or
//! scrape), or fail loudly (no procfs: the figures are left out).

/// Resident memory in bytes: now, and the highest since the process started.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProcessMemory {
    pub resident: u64,
    pub peak_resident: u64,
}

impl ProcessMemory {
    /// The figures now (`None` without `/proc`, e.g. on another system).
    pub fn read() -> Option<ProcessMemory> {
        let status = std::fs::read_to_string("/proc/self/status").ok()?;
        ProcessMemory::parse(&status)
    }

    /// From the text of `/proc/PID/status` (`VmRSS:` and `VmHWM:` lines, in kB).
    fn parse(status: &str) -> Option<ProcessMemory> {
        let kib = |key: &str| {
            let line = status.lines().find(|l| l.starts_with(key))?;
            let mut words = line.get(key.len()..)?.split_whitespace();
            let n: u64 = words.next()?.parse().ok()?;
            (words.next() == Some("kB")).then_some(n.saturating_mul(1024))
        };
        Some(ProcessMemory {
            resident: kib("VmRSS:")?,
            peak_resident: kib("VmHWM:")?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_resident_lines() {
        let text = "Name:\tringmq\nVmPeak:\t  900000 kB\nVmHWM:\t    5120 kB\n\
                    VmRSS:\t    4096 kB\nThreads:\t4\n";
        assert_eq!(
            ProcessMemory::parse(text),
            Some(ProcessMemory {
                resident: 4096 * 1024,
                peak_resident: 5120 * 1024,
            })
        );
        assert_eq!(ProcessMemory::parse("VmRSS:\t12 kB\n"), None, "no peak");
        assert_eq!(ProcessMemory::parse("VmRSS:\tlots\nVmHWM:\t1 kB\n"), None);
    }

    #[test]
    fn reads_this_process() {
        let m = ProcessMemory::read().expect("Linux has /proc/self/status");
        assert!(m.resident > 0);
        assert!(m.peak_resident >= m.resident);
    }
}
