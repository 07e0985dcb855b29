//! Thin, audited wrappers over the few libc calls the runtime makes itself: the shard's
//! epoll `Poller` (readiness of every connection; the runtime waits on the poller's fd),
//! non-blocking `recv`/`send` on a connection's raw fd (the I/O is ours so that reads land in
//! the shard's one scratch buffer), `shutdown`, and signal handling and the transparent huge
//! page switch for `main`.
//!
//! Must never: block (every socket call uses `MSG_DONTWAIT`, the poller is asked with a zero
//! timeout), raise SIGPIPE (`MSG_NOSIGNAL`), or take ownership of a connection's fd (callers
//! own their fds; these functions only borrow them; the poller owns only its own).

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

/// Result of one non-blocking socket call.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum IoOutcome {
    /// This many bytes moved (0 from `recv` means the peer closed its side).
    Done(usize),
    /// The socket is not ready (`EAGAIN`); wait for readiness.
    WouldBlock,
}

/// Runs one non-blocking socket call, again while a signal interrupts it: EINTR says nothing
/// about the socket, and on an edge-triggered fd reading it as "would block" would leave
/// input (or output space) that no new edge reports.
fn retry_interrupted(mut call: impl FnMut() -> isize) -> io::Result<IoOutcome> {
    loop {
        let ret = call();
        if ret >= 0 {
            return Ok(IoOutcome::Done(ret as usize));
        }
        let err = io::Error::last_os_error();
        match err.kind() {
            io::ErrorKind::Interrupted => continue,
            io::ErrorKind::WouldBlock => return Ok(IoOutcome::WouldBlock),
            _ => return Err(err),
        }
    }
}

/// Reads what the socket holds into `buf` (at most `buf.len()` bytes) without blocking.
pub(crate) fn recv(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<IoOutcome> {
    retry_interrupted(|| {
        // SAFETY: `buf` is a valid, writable region of `buf.len()` bytes for the duration of
        // the call; the kernel writes at most that many bytes. `fd` is borrowed from a live
        // socket (the borrow keeps its owner, and so the fd, alive).
        unsafe {
            libc::recv(
                fd.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                libc::MSG_DONTWAIT,
            )
        }
    })
}

/// Whether the socket holds input not read yet (a one-byte peek that consumes nothing).
pub(crate) fn has_unread_input(fd: BorrowedFd<'_>) -> bool {
    let mut byte = 0u8;
    let got = retry_interrupted(|| {
        // SAFETY: `byte` is a valid, writable 1-byte region for the duration of the call;
        // MSG_PEEK leaves the data in the socket. `fd` is borrowed from a live socket.
        unsafe {
            libc::recv(
                fd.as_raw_fd(),
                (&raw mut byte).cast(),
                1,
                libc::MSG_DONTWAIT | libc::MSG_PEEK,
            )
        }
    });
    matches!(got, Ok(IoOutcome::Done(n)) if n > 0)
}

/// Writes as much of `buf` as the socket accepts without blocking.
pub(crate) fn send(fd: BorrowedFd<'_>, buf: &[u8]) -> io::Result<IoOutcome> {
    retry_interrupted(|| {
        // SAFETY: `buf` is a valid, readable region of `buf.len()` bytes for the duration of
        // the call; `fd` is borrowed from a live socket. MSG_NOSIGNAL turns a closed peer into
        // EPIPE instead of a process-killing SIGPIPE.
        unsafe {
            libc::send(
                fd.as_raw_fd(),
                buf.as_ptr().cast(),
                buf.len(),
                libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
            )
        }
    })
}

/// What one `accept` on a non-blocking listener gave.
#[derive(Debug)]
pub(crate) enum Accepted {
    /// A connection: its socket (non-blocking, close-on-exec) and the peer's address.
    Conn(OwnedFd, std::net::SocketAddr),
    /// No connection is waiting.
    WouldBlock,
}

/// Accepts one connection without blocking; the new socket is non-blocking and
/// close-on-exec from the start (`accept4`), so no further call is needed to set it up.
pub(crate) fn accept(listener: BorrowedFd<'_>) -> io::Result<Accepted> {
    loop {
        // SAFETY: `storage` is a zeroed sockaddr_storage, large enough for any address; `len`
        // holds its size and the kernel writes back the size it used (at most that). The
        // listener fd is borrowed from its live owner.
        let result = unsafe {
            socket2::SockAddr::try_init(|storage, len| {
                let fd = libc::accept4(
                    listener.as_raw_fd(),
                    storage.cast(),
                    len,
                    libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                );
                if fd < 0 {
                    Err(io::Error::last_os_error())
                } else {
                    Ok(fd)
                }
            })
        };
        match result {
            Ok((fd, addr)) => {
                // SAFETY: `accept4` returned a fresh fd that nothing else owns.
                let fd = unsafe { OwnedFd::from_raw_fd(fd) };
                // An AF_UNIX or unknown family cannot reach a TCP listener; `0.0.0.0:0` keeps
                // the connection rather than failing it over a log label.
                let peer = addr
                    .as_socket()
                    .unwrap_or_else(|| std::net::SocketAddr::from(([0, 0, 0, 0], 0)));
                return Ok(Accepted::Conn(fd, peer));
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            // ECONNABORTED: the peer gave up while queued; the next one may be fine.
            Err(e) if e.raw_os_error() == Some(libc::ECONNABORTED) => continue,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Accepted::WouldBlock),
            Err(e) => return Err(e),
        }
    }
}

/// Turns Nagle's algorithm off: the shard writes each connection once per turn, so small
/// messages never wait for an ACK (without it they stall 40 ms on delayed ACKs).
pub(crate) fn set_nodelay(fd: BorrowedFd<'_>) -> io::Result<()> {
    let on: libc::c_int = 1;
    // SAFETY: `on` is a valid c_int for the duration of the call and its size is passed;
    // `fd` is borrowed from a live socket.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_NODELAY,
            (&raw const on).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// An fd held in reserve for the moment the process runs out of file descriptors: closing it
/// lets one `accept` take a waiting connection off the backlog, so that it can be closed at
/// once instead of waiting there silently (and keeping the listener's readiness edge from
/// ever firing again).
pub(crate) fn reserve_fd() -> io::Result<OwnedFd> {
    Ok(std::fs::File::open("/dev/null")?.into())
}

/// Half-closes the write side so that everything already written is followed by a FIN
/// before the fd is closed.
pub(crate) fn shutdown_write(fd: BorrowedFd<'_>) {
    // SAFETY: plain syscall on a borrowed, live fd; no memory is passed. Errors (the peer is
    // already gone) are irrelevant: the fd is closed right after.
    unsafe {
        libc::shutdown(fd.as_raw_fd(), libc::SHUT_WR);
    }
}

/// The readiness set of one shard: an epoll instance that holds every connection's fd,
/// edge-triggered, with the connection's slot and generation as its token. The set lives in
/// kernel memory; the shard's runtime waits on the set's own fd, so an idle connection costs
/// no task, future or runtime registration in user space.
#[derive(Debug)]
pub(crate) struct Poller {
    epfd: OwnedFd,
}

/// One readiness event: `token` as registered, `flags` the `EPOLL*` bits.
pub(crate) type PollEvent = libc::epoll_event;

/// An empty event, to fill an event buffer with.
pub(crate) const NO_EVENT: PollEvent = libc::epoll_event { events: 0, u64: 0 };

impl Poller {
    pub(crate) fn new() -> io::Result<Poller> {
        // SAFETY: plain syscall with an integer flag; no memory is passed.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `epoll_create1` returned a fresh fd that nothing else owns.
        let epfd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Poller { epfd })
    }

    /// A second fd of the same epoll instance, for the runtime to wait on (readable while
    /// any registered connection has an event queued).
    pub(crate) fn try_clone_fd(&self) -> io::Result<OwnedFd> {
        self.epfd.try_clone()
    }

    /// Watches `fd` for input, output space, peer close and errors, edge-triggered: an event
    /// is queued each time its state changes, and the owner reads (or writes) until
    /// `EAGAIN` or remembers that it did not.
    pub(crate) fn add(&self, fd: BorrowedFd<'_>, token: u64) -> io::Result<()> {
        let flags = libc::EPOLLIN | libc::EPOLLOUT | libc::EPOLLRDHUP | libc::EPOLLET;
        self.register(fd, flags as u32, token)
    }

    /// Watches a listening socket for waiting connections, edge-triggered: the owner accepts
    /// until `EAGAIN` (or remembers that it did not).
    pub(crate) fn add_listener(&self, fd: BorrowedFd<'_>, token: u64) -> io::Result<()> {
        self.register(fd, (libc::EPOLLIN | libc::EPOLLET) as u32, token)
    }

    /// Watches a registered connection's `fd` for output space (and errors) only,
    /// edge-triggered: its input comes from the shard's receive ring (`uring.rs`), and a
    /// socket whose writes never fill reports nothing.
    pub(crate) fn watch_output(&self, fd: BorrowedFd<'_>, token: u64) -> io::Result<()> {
        let flags = libc::EPOLLOUT | libc::EPOLLET;
        self.control(libc::EPOLL_CTL_MOD, fd, flags as u32, token)
    }

    fn register(&self, fd: BorrowedFd<'_>, events: u32, token: u64) -> io::Result<()> {
        self.control(libc::EPOLL_CTL_ADD, fd, events, token)
    }

    fn control(&self, op: i32, fd: BorrowedFd<'_>, events: u32, token: u64) -> io::Result<()> {
        let mut event = libc::epoll_event { events, u64: token };
        // SAFETY: `event` is a valid epoll_event for the duration of the call; `fd` is a
        // live socket borrowed from its owner; the kernel copies the event.
        let rc =
            unsafe { libc::epoll_ctl(self.epfd.as_raw_fd(), op, fd.as_raw_fd(), &raw mut event) };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Stops watching `fd` (before its ownership moves to another shard; closing an fd
    /// removes it by itself).
    pub(crate) fn delete(&self, fd: BorrowedFd<'_>) {
        // SAFETY: plain syscall on two live fds; a null event is allowed for DEL (Linux
        // 2.6.9+). An error (fd not registered) leaves nothing to undo.
        unsafe {
            libc::epoll_ctl(
                self.epfd.as_raw_fd(),
                libc::EPOLL_CTL_DEL,
                fd.as_raw_fd(),
                std::ptr::null_mut(),
            );
        }
    }

    /// Takes the queued events without waiting; returns how many were written to `events`.
    pub(crate) fn poll(&self, events: &mut [PollEvent]) -> usize {
        let max = events.len().min(i32::MAX as usize) as i32;
        // SAFETY: `events` is a valid, writable array of `max` epoll_events for the duration
        // of the call; a timeout of 0 never blocks.
        let n = unsafe { libc::epoll_wait(self.epfd.as_raw_fd(), events.as_mut_ptr(), max, 0) };
        // EINTR (or any error) reads as "nothing queued": the next pass asks again.
        usize::try_from(n).unwrap_or(0)
    }
}

/// Stops a listening socket: it refuses new connections and its pending `accept`s fail,
/// before its fd is closed.
pub(crate) fn shutdown_listener(fd: BorrowedFd<'_>) {
    // SAFETY: plain syscall on a borrowed, live fd; no memory is passed. An error leaves the
    // socket to be closed by its owner.
    unsafe {
        libc::shutdown(fd.as_raw_fd(), libc::SHUT_RDWR);
    }
}

/// Blocks SIGINT, SIGTERM and SIGHUP in the calling thread and every thread it spawns
/// afterwards, so that `wait_for_signal` receives them synchronously instead of a handler
/// running at an arbitrary point of a shard's loop (and SIGHUP's default action, which ends
/// the process on the spot, never applies).
pub fn block_signals() -> io::Result<()> {
    let set = signal_set();
    // SAFETY: `set` is an initialised signal set; a null old-set pointer is allowed.
    let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc));
    }
    Ok(())
}

/// Waits until SIGINT, SIGTERM or SIGHUP arrives (they must be blocked, see
/// `block_signals`) and returns the signal number.
pub fn wait_for_signal() -> io::Result<i32> {
    let set = signal_set();
    loop {
        let mut sig: libc::c_int = 0;
        // SAFETY: `set` is initialised and `sig` is a valid out-pointer for the call.
        let rc = unsafe { libc::sigwait(&set, &mut sig) };
        match rc {
            0 => return Ok(sig),
            libc::EINTR => continue,
            e => return Err(io::Error::from_raw_os_error(e)),
        }
    }
}

/// Turns transparent huge pages off for this process (`PR_SET_THP_DISABLE`, Linux 3.15+).
///
/// With THP, the first touch of any 2 MiB region of a shard's heap makes all of it resident:
/// idle memory then grows in 2 MiB steps per thread. mimalloc is built with `no_thp`, so it
/// no longer marks its arenas `MADV_HUGEPAGE` (that alone covers kernels in `madvise` mode,
/// from the first allocation on); this call covers kernels in `always` mode for every page
/// faulted after it. Measured (release, io_uring, `--shards 2`, THP in `madvise` mode): empty
/// broker 12.0 -> 4.3 MB RSS; 5,000 idle connections 5.4 -> 2.8 KB per connection; pairs
/// and fan-in throughput unchanged within noise (the broker's hot data is small).
pub fn disable_transparent_huge_pages() -> io::Result<()> {
    // SAFETY: plain syscall with integer arguments; no memory is passed.
    let rc = unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Sends SIGHUP to process `pid` (`ringmq reload --pid PID`: a running broker reloads its
/// password and ACL files).
pub fn send_reload_signal(pid: u32) -> io::Result<()> {
    let pid = libc::pid_t::try_from(pid)
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: plain syscall with integer arguments; a positive pid names one process.
    let rc = unsafe { libc::kill(pid, libc::SIGHUP) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn signal_set() -> libc::sigset_t {
    // SAFETY: sigset_t is plain data; sigemptyset initialises it before any other use.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGHUP);
        set
    }
}
