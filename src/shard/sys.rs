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
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// Result of one non-blocking socket call.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum IoOutcome {
    /// This many bytes moved (0 from `recv` means the peer closed its side).
    Done(usize),
    /// The socket is not ready (`EAGAIN`); wait for readiness.
    WouldBlock,
}

fn outcome(ret: isize) -> io::Result<IoOutcome> {
    if ret >= 0 {
        return Ok(IoOutcome::Done(ret as usize));
    }
    let err = io::Error::last_os_error();
    match err.kind() {
        io::ErrorKind::WouldBlock => Ok(IoOutcome::WouldBlock),
        io::ErrorKind::Interrupted => Ok(IoOutcome::WouldBlock),
        _ => Err(err),
    }
}

/// Reads what the socket holds into `buf` (at most `buf.len()` bytes) without blocking.
pub(crate) fn recv(fd: RawFd, buf: &mut [u8]) -> io::Result<IoOutcome> {
    // SAFETY: `buf` is a valid, writable region of `buf.len()` bytes for the duration of the
    // call; the kernel writes at most that many bytes and never reads them. `fd` is borrowed
    // from the live socket of a connection slot (`Conn::fd`, closed only with the slot).
    let ret = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT) };
    outcome(ret)
}

/// Writes as much of `buf` as the socket accepts without blocking.
pub(crate) fn send(fd: RawFd, buf: &[u8]) -> io::Result<IoOutcome> {
    // SAFETY: `buf` is a valid, readable region of `buf.len()` bytes for the duration of the
    // call. `fd` is borrowed from a live connection slot (`Conn::fd`). MSG_NOSIGNAL
    // turns a closed peer into EPIPE instead of a process-killing SIGPIPE.
    let ret = unsafe {
        libc::send(
            fd,
            buf.as_ptr().cast(),
            buf.len(),
            libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
        )
    };
    outcome(ret)
}

/// Half-closes the write side so that everything already written is followed by a FIN
/// before the fd is closed.
pub(crate) fn shutdown_write(fd: RawFd) {
    // SAFETY: plain syscall on a borrowed, live fd; no memory is passed. Errors (the peer is
    // already gone) are irrelevant: the fd is closed right after.
    unsafe {
        libc::shutdown(fd, libc::SHUT_WR);
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
    pub(crate) fn add(&self, fd: RawFd, token: u64) -> io::Result<()> {
        let mut event = libc::epoll_event {
            events: (libc::EPOLLIN | libc::EPOLLOUT | libc::EPOLLRDHUP | libc::EPOLLET) as u32,
            u64: token,
        };
        // SAFETY: `event` is a valid epoll_event for the duration of the call; `fd` is a
        // live socket borrowed from its owner; the kernel copies the event.
        let rc = unsafe {
            libc::epoll_ctl(
                self.epfd.as_raw_fd(),
                libc::EPOLL_CTL_ADD,
                fd,
                &raw mut event,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Stops watching `fd` (before its ownership moves to another shard; closing an fd
    /// removes it by itself).
    pub(crate) fn delete(&self, fd: RawFd) {
        // SAFETY: plain syscall on two live fds; a null event is allowed for DEL (Linux
        // 2.6.9+). An error (fd not registered) leaves nothing to undo.
        unsafe {
            libc::epoll_ctl(
                self.epfd.as_raw_fd(),
                libc::EPOLL_CTL_DEL,
                fd,
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
pub(crate) fn shutdown_listener(fd: RawFd) {
    // SAFETY: plain syscall on a borrowed, live fd (the listener's accept loop still owns
    // it); no memory is passed. An error leaves the socket to be closed by its owner.
    unsafe {
        libc::shutdown(fd, libc::SHUT_RDWR);
    }
}

/// Blocks SIGINT and SIGTERM in the calling thread and every thread it spawns afterwards, so
/// that `wait_for_termination` receives them synchronously instead of a handler running at an
/// arbitrary point of a shard's loop.
pub fn block_termination_signals() -> io::Result<()> {
    let set = termination_set();
    // SAFETY: `set` is an initialised signal set; a null old-set pointer is allowed.
    let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc));
    }
    Ok(())
}

/// Waits until SIGINT or SIGTERM arrives (they must be blocked, see
/// `block_termination_signals`) and returns the signal number.
pub fn wait_for_termination() -> io::Result<i32> {
    let set = termination_set();
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

fn termination_set() -> libc::sigset_t {
    // SAFETY: sigset_t is plain data; sigemptyset initialises it before any other use.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        set
    }
}
