//! The few system calls std does not offer: waiting for signals, the process's ids and
//! groups, and a non-blocking look at standard input. Every `unsafe` block of the crate is
//! here.
//!
//! # Design
//!
//! Signals are not handled by an async signal handler: [`block_signals`] blocks them in the
//! main thread before any other thread exists (so every thread inherits the mask), and one
//! thread takes them with `sigwait(3)`. Ordinary code then decides what to do, with no
//! async-signal-safety rules to follow.
//!
//! This also matters when the server is PID 1 of a PID namespace: the kernel drops signals
//! whose action is the default for such a process, but a *blocked* signal is never
//! considered ignored, so SIGTERM from `runc kill` reaches `sigwait`.
#![allow(unsafe_code)]

use std::io;

/// A set of signals, blocked in every thread and taken by [`SignalSet::wait`].
pub struct SignalSet {
    /// The libc signal set.
    set: libc::sigset_t,
}

/// Blocks `signals` in the calling thread (and so in every thread it spawns later).
///
/// Call it from `main` before spawning any thread, or a thread with the default mask could
/// receive a signal and take its default action.
pub fn block_signals(signals: &[libc::c_int]) -> io::Result<SignalSet> {
    // SAFETY: an all-zero `sigset_t` is a valid value; `sigemptyset` then initialises it.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid, exclusively borrowed `sigset_t`.
    if unsafe { libc::sigemptyset(&mut set) } != 0 {
        return Err(io::Error::last_os_error());
    }
    for &signal in signals {
        // SAFETY: as above; an invalid signal number is reported through the return value.
        if unsafe { libc::sigaddset(&mut set, signal) } != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    // SAFETY: `set` is initialised; passing a null old-set pointer is allowed.
    let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc));
    }
    Ok(SignalSet { set })
}

impl SignalSet {
    /// Waits until one of the blocked signals is pending, takes it and returns its number.
    pub fn wait(&self) -> io::Result<libc::c_int> {
        let mut signal: libc::c_int = 0;
        // SAFETY: `self.set` is an initialised signal set and `signal` a valid out-pointer.
        let rc = unsafe { libc::sigwait(&self.set, &mut signal) };
        if rc != 0 {
            return Err(io::Error::from_raw_os_error(rc));
        }
        Ok(signal)
    }
}

/// The real user id.
pub fn uid() -> u32 {
    // SAFETY: getuid(2) has no preconditions and cannot fail.
    unsafe { libc::getuid() }
}

/// The real group id.
pub fn gid() -> u32 {
    // SAFETY: getgid(2) has no preconditions and cannot fail.
    unsafe { libc::getgid() }
}

/// The supplementary group ids.
pub fn groups() -> io::Result<Vec<u32>> {
    // The list can change between the two calls only if this process changes it, which it
    // does not; the second call still fails cleanly (EINVAL) rather than overflow.
    // SAFETY: a zero size with a null pointer asks only for the count.
    let count = unsafe { libc::getgroups(0, std::ptr::null_mut()) };
    let Ok(len) = usize::try_from(count) else {
        return Err(io::Error::last_os_error());
    };
    let mut groups: Vec<libc::gid_t> = vec![0; len];
    // SAFETY: `groups` has room for exactly `count` entries.
    let got = unsafe { libc::getgroups(count, groups.as_mut_ptr()) };
    let Ok(got) = usize::try_from(got) else {
        return Err(io::Error::last_os_error());
    };
    groups.truncate(got);
    Ok(groups)
}

/// Whether reading standard input returns end-of-file at once: `Some(true)` for
/// `/dev/null` or a closed pipe, `Some(false)` when a read would block or returns data
/// (one byte is then consumed), `None` when fd 0 cannot be polled.
pub fn stdin_at_eof() -> Option<bool> {
    let mut pfd = libc::pollfd {
        fd: 0,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: `pfd` is one valid `pollfd`; a zero timeout never blocks.
    let ready = unsafe { libc::poll(&mut pfd, 1, 0) };
    if ready < 0 || pfd.revents & libc::POLLNVAL != 0 {
        return None;
    }
    if ready == 0 {
        return Some(false);
    }
    let mut byte = 0u8;
    // Not `std::io::stdin()`: std reports EBADF on fd 0 as end-of-file, which would hide a
    // closed descriptor.
    // SAFETY: `byte` is a valid one-byte buffer; poll said the read will not block.
    let n = unsafe { libc::read(0, (&raw mut byte).cast(), 1) };
    match n {
        0 => Some(true),
        n if n > 0 => Some(false),
        _ => None,
    }
}
