//! Thin, checked wrappers over the libc calls the generator needs: epoll, eventfd, non-blocking
//! TCP sockets bound to a chosen loopback source address, read/write, rlimits, CPU time and
//! /proc readings. This is the only module with `unsafe`; everything above it sees `io::Result`.
//! It never panics on an I/O result: errors go back to the caller, which counts them.

use std::io;
use std::net::Ipv4Addr;
use std::os::fd::RawFd;
use std::time::Duration;

fn cvt(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

fn cvt_size(ret: libc::ssize_t) -> io::Result<usize> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret as usize)
    }
}

/// Raises RLIMIT_NOFILE to its hard limit; returns the new soft limit.
pub fn raise_nofile_limit() -> io::Result<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a valid, writable rlimit for the duration of the call.
    cvt(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) })?;
    lim.rlim_cur = lim.rlim_max;
    // SAFETY: `lim` is a valid rlimit; raising the soft limit up to the hard one is always allowed.
    cvt(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) })?;
    Ok(lim.rlim_cur)
}

/// CPU time (user + system) this process has used so far.
pub fn process_cpu_time() -> Duration {
    // SAFETY: an all-zero rusage is a valid value for getrusage to overwrite.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `ru` is valid and writable; RUSAGE_SELF cannot fail with a valid pointer.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// CPU time (utime + stime) of another process, from /proc/PID/stat.
pub fn pid_cpu_time(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces; fields are counted after its closing parenthesis.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // Fields 14 and 15 of stat(5) are at 11 and 12 after the name and state.
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // SAFETY: sysconf has no memory-safety preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Some(Duration::from_nanos(ticks * 1_000_000_000 / hz))
}

/// Resident set size of a process in bytes, from /proc/PID/status VmRSS.
pub fn pid_rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// The kernel's count of connections dropped because a listen queue was full
/// (TcpExt ListenOverflows in /proc/net/netstat): SYNs dropped this way retry after 1 s and
/// would show up as 1 s CONNACK latencies that are the backlog's doing, not the broker's code.
pub fn listen_overflows() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/net/netstat").ok()?;
    let mut lines = text.lines();
    while let (Some(names), Some(values)) = (lines.next(), lines.next()) {
        if !names.starts_with("TcpExt:") {
            continue;
        }
        let idx = names
            .split_whitespace()
            .position(|n| n == "ListenOverflows")?;
        return values.split_whitespace().nth(idx)?.parse().ok();
    }
    None
}

/// An owned file descriptor closed on drop.
#[derive(Debug)]
pub struct Fd(RawFd);

impl Fd {
    pub fn raw(&self) -> RawFd {
        self.0
    }
}

impl Drop for Fd {
    fn drop(&mut self) {
        // SAFETY: we own this descriptor and close it exactly once.
        unsafe { libc::close(self.0) };
    }
}

/// Lowers the calling thread's timer slack to 1 us (default 50 us): open-loop sends are
/// scheduled to the microsecond, and the slack would add straight to measured latency.
pub fn tighten_timer_slack() {
    // SAFETY: PR_SET_TIMERSLACK takes a plain integer and affects only the calling thread.
    unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1000 as libc::c_ulong, 0, 0, 0) };
}

/// Reads into `buf`; `Ok(0)` is end of stream, `WouldBlock` means nothing available.
pub fn read(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: `buf` is valid for writes of `buf.len()` bytes.
    cvt_size(unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) })
}

/// Sends `buf` without raising SIGPIPE when the peer has gone.
pub fn send(fd: RawFd, buf: &[u8]) -> io::Result<usize> {
    // SAFETY: `buf` is valid for reads of `buf.len()` bytes.
    cvt_size(unsafe { libc::send(fd, buf.as_ptr().cast(), buf.len(), libc::MSG_NOSIGNAL) })
}

fn set_int_opt(
    fd: RawFd,
    level: libc::c_int,
    name: libc::c_int,
    val: libc::c_int,
) -> io::Result<()> {
    // SAFETY: `val` lives across the call and the length matches its type.
    cvt(unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&val as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    })
    .map(drop)
}

fn sockaddr(ip: Ipv4Addr, port: u16) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: port.to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(ip).to_be(),
        },
        sin_zero: [0; 8],
    }
}

/// Starts a non-blocking TCP connect from `source` (port chosen at connect time, so each source
/// address has its own ephemeral range per destination) to `dest`. TCP_NODELAY is set because
/// writes are already batched per loop turn; Nagle would only add delayed-ACK stalls.
pub fn start_connect(source: Option<Ipv4Addr>, dest: Ipv4Addr, port: u16) -> io::Result<Fd> {
    // SAFETY: plain socket creation, no pointers.
    let raw = cvt(unsafe {
        libc::socket(
            libc::AF_INET,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    })?;
    let fd = Fd(raw);
    set_int_opt(raw, libc::IPPROTO_TCP, libc::TCP_NODELAY, 1)?;
    if let Some(src) = source {
        // Without this, bind() picks the port before the destination is known and one source
        // address would be limited to ~28k connections in total instead of per destination.
        set_int_opt(raw, libc::IPPROTO_IP, libc::IP_BIND_ADDRESS_NO_PORT, 1)?;
        let sa = sockaddr(src, 0);
        // SAFETY: `sa` is a valid sockaddr_in and the length matches it.
        cvt(unsafe {
            libc::bind(
                raw,
                (&sa as *const libc::sockaddr_in).cast(),
                std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
            )
        })?;
    }
    let sa = sockaddr(dest, port);
    // SAFETY: `sa` is a valid sockaddr_in and the length matches it.
    let ret = unsafe {
        libc::connect(
            raw,
            (&sa as *const libc::sockaddr_in).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    };
    if ret < 0 {
        let err = io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::EINPROGRESS) {
            return Err(err);
        }
    }
    Ok(fd)
}

/// The pending error of a socket (SO_ERROR), used once a non-blocking connect reports writable.
pub fn take_socket_error(fd: RawFd) -> io::Result<()> {
    let mut val: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `val` and `len` are valid and writable, `len` holds the size of `val`.
    cvt(unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_ERROR,
            (&mut val as *mut libc::c_int).cast(),
            &mut len,
        )
    })?;
    if val == 0 {
        Ok(())
    } else {
        Err(io::Error::from_raw_os_error(val))
    }
}

/// An edge-triggered epoll instance; the event's u64 carries the caller's token.
#[derive(Debug)]
pub struct Epoll {
    fd: Fd,
    /// epoll_pwait2 (ns timeouts) is missing on kernels before 5.11; fall back to ms.
    has_pwait2: bool,
}

impl Epoll {
    pub fn new() -> io::Result<Epoll> {
        // SAFETY: no pointers involved.
        let raw = cvt(unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) })?;
        Ok(Epoll {
            fd: Fd(raw),
            has_pwait2: true,
        })
    }

    /// Registers `fd` once for input, output and hang-up, edge-triggered, so that no epoll_ctl
    /// is needed when a connection's output goes from empty to pending.
    pub fn add(&self, fd: RawFd, token: u64) -> io::Result<()> {
        let mut ev = libc::epoll_event {
            events: (libc::EPOLLIN | libc::EPOLLOUT | libc::EPOLLRDHUP | libc::EPOLLET) as u32,
            u64: token,
        };
        // SAFETY: `ev` is valid for the duration of the call.
        cvt(unsafe { libc::epoll_ctl(self.fd.raw(), libc::EPOLL_CTL_ADD, fd, &mut ev) }).map(drop)
    }

    /// Waits for events; `timeout` None blocks. Returns the number of filled entries.
    pub fn wait(
        &mut self,
        events: &mut [libc::epoll_event],
        timeout: Option<Duration>,
    ) -> io::Result<usize> {
        let max = events.len().min(i32::MAX as usize) as libc::c_int;
        let ret = if self.has_pwait2 {
            let ts = timeout.map(|t| libc::timespec {
                tv_sec: t.as_secs() as libc::time_t,
                tv_nsec: t.subsec_nanos() as libc::c_long,
            });
            let ts_ptr = ts
                .as_ref()
                .map_or(std::ptr::null(), |t| t as *const libc::timespec);
            // SAFETY: `events` is valid for `max` entries; `ts_ptr` is null or points to `ts`.
            let r = unsafe {
                libc::epoll_pwait2(
                    self.fd.raw(),
                    events.as_mut_ptr(),
                    max,
                    ts_ptr,
                    std::ptr::null(),
                )
            };
            if r < 0 && io::Error::last_os_error().raw_os_error() == Some(libc::ENOSYS) {
                self.has_pwait2 = false;
                return self.wait(events, timeout);
            }
            r
        } else {
            // Round up: rounding down would spin on sub-millisecond timeouts.
            let ms = timeout.map_or(-1, |t| {
                t.as_micros().div_ceil(1000).min(i32::MAX as u128) as i32
            });
            // SAFETY: `events` is valid for `max` entries.
            unsafe { libc::epoll_wait(self.fd.raw(), events.as_mut_ptr(), max, ms) }
        };
        match cvt(ret) {
            Ok(n) => Ok(n as usize),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(0),
            Err(e) => Err(e),
        }
    }
}

/// An eventfd used to wake a worker parked in epoll from another thread.
#[derive(Debug)]
pub struct EventFd(Fd);

impl EventFd {
    pub fn new() -> io::Result<EventFd> {
        // SAFETY: no pointers involved.
        let raw = cvt(unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) })?;
        Ok(EventFd(Fd(raw)))
    }

    pub fn raw(&self) -> RawFd {
        self.0.raw()
    }

    /// Adds one to the counter; a full counter (EAGAIN) already means "wake up", so errors are moot.
    pub fn notify(&self) {
        let one: u64 = 1;
        // SAFETY: `one` is valid for 8 bytes of reads, as eventfd requires.
        unsafe { libc::write(self.raw(), (&one as *const u64).cast(), 8) };
    }

    /// Resets the counter so the next notify produces a new edge.
    pub fn drain(&self) {
        let mut val: u64 = 0;
        // SAFETY: `val` is valid for 8 bytes of writes.
        unsafe { libc::read(self.raw(), (&mut val as *mut u64).cast(), 8) };
    }
}
