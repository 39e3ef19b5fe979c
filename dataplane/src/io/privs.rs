//! Dropping root after set-up: both daemons become an unprivileged user (`--user`, the
//! packaged units' `isthmus`), keeping only the capabilities they use at run time.
//!
//! Linux keeps credentials and capabilities per thread, and by the time the set-up is done
//! the daemons have their threads. So the drop runs on every thread: the calling thread
//! first, then each other thread of the process from a signal handler ([`DROP_SIGNAL`]),
//! doing the same raw system calls (libcap's "psx" does the same). It ends only when
//! `/proc/self/task/*/status` shows every thread with the user's ids and exactly the kept
//! capabilities; a thread that refused is an error, and the caller must then exit: a process
//! half dropped is not one to run.
//!
//! For each thread, in order: the bounding set shrinks to the kept capabilities, the
//! supplementary groups go, group and user ids become the user's (real, effective, saved)
//! with `PR_SET_KEEPCAPS` so that the permitted set survives, the effective and permitted
//! sets become the kept capabilities (inheritable and ambient empty), and `no_new_privs` is
//! set.

#![allow(unsafe_code)]

use std::ffi::CString;
use std::io;
use std::sync::atomic::{AtomicI32, AtomicU32, AtomicU64, Ordering::SeqCst};
use std::time::{Duration, Instant};

/// A capability the daemons may keep (capabilities(7) numbers).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum Cap {
    /// A listen port below 1024 (`wg set ... listen-port`).
    NetBindService = 10,
    /// Links, addresses and routes over netlink, `SO_MARK` (fwmark), attaching XDP programs.
    NetAdmin = 12,
    /// AF_XDP sockets; re-binding a socket to another interface (`SO_BINDTODEVICE`).
    NetRaw = 13,
    /// AF_XDP UMEMs not counted against `RLIMIT_MEMLOCK`.
    IpcLock = 14,
    /// Loading XDP programs and creating their maps.
    Bpf = 39,
}

impl Cap {
    /// The name capabilities(7) gives it.
    pub fn name(self) -> &'static str {
        match self {
            Cap::NetBindService => "CAP_NET_BIND_SERVICE",
            Cap::NetAdmin => "CAP_NET_ADMIN",
            Cap::NetRaw => "CAP_NET_RAW",
            Cap::IpcLock => "CAP_IPC_LOCK",
            Cap::Bpf => "CAP_BPF",
        }
    }
}

/// The capabilities `caps` as the bit mask `/proc/PID/status` shows (`CapEff:`).
pub fn mask(caps: &[Cap]) -> u64 {
    caps.iter().fold(0, |m, &c| m | 1u64 << (c as u32))
}

/// A user to drop to: its name and ids from the password database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    /// Its name.
    pub name: String,
    /// Its user id.
    pub uid: u32,
    /// Its primary group id.
    pub gid: u32,
}

impl User {
    /// Looks `name` up in the password database (getpwnam_r(3)).
    ///
    /// # Errors
    /// When there is no such user, with a message that says so.
    pub fn lookup(name: &str) -> io::Result<User> {
        let cname = CString::new(name)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a NUL in the user name"))?;
        let mut buf = vec![0u8; 16 * 1024];
        // SAFETY: an all-zero passwd is a valid value of the plain C struct; getpwnam_r
        // fills it.
        let mut pw: libc::passwd = unsafe { std::mem::zeroed() };
        let mut found: *mut libc::passwd = std::ptr::null_mut();
        // SAFETY: every pointer is to memory we own for the call; buf's length is given.
        let r = unsafe {
            libc::getpwnam_r(
                cname.as_ptr(),
                &mut pw,
                buf.as_mut_ptr().cast(),
                buf.len(),
                &mut found,
            )
        };
        if r != 0 {
            return Err(io::Error::from_raw_os_error(r));
        }
        if found.is_null() {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("no user {name:?} (create it, e.g. adduser --system --group {name})"),
            ));
        }
        Ok(User {
            name: name.to_string(),
            uid: pw.pw_uid,
            gid: pw.pw_gid,
        })
    }
}

/// Whether this process can become `user`: it is root, or already that user. Checked at
/// start, before anything is created, so that the drop itself (after the sockets exist)
/// does not fail for want of privilege.
///
/// # Errors
/// When it cannot, saying why.
pub fn check_can_become(user: &User) -> io::Result<()> {
    // SAFETY: geteuid(2) has no preconditions.
    let euid = unsafe { libc::geteuid() };
    if user.uid == 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("user {} is root: nothing to drop to", user.name),
        ));
    }
    if euid != 0 && euid != user.uid {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "becoming user {} takes root (running as uid {euid})",
                user.name
            ),
        ));
    }
    Ok(())
}

/// Gives the socket file `path` to `user`, so that processes running as the user (the other
/// daemon, `isthmusctl`) can connect to it; with the directory too when it is isthmus's own
/// runtime directory (`/var/run/isthmus`, 0700), which lets a dropped daemon reach the other's
/// socket there and remove its own when it stops.
///
/// # Errors
/// As chown(2).
pub fn give_socket(user: &User, path: &std::path::Path) -> io::Result<()> {
    let chown = |p: &std::path::Path| {
        std::os::unix::fs::chown(p, Some(user.uid), Some(user.gid)).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("giving {} to user {}: {e}", p.display(), user.name),
            )
        })
    };
    chown(path)?;
    match path.parent() {
        Some(dir) if dir == std::path::Path::new(crate::ctl::RUN_DIR) => chown(dir),
        _ => Ok(()),
    }
}

/// The signal that makes a thread drop: the first real-time signal glibc leaves free.
fn drop_signal() -> libc::c_int {
    libc::SIGRTMIN()
}

/// What every thread drops to; set before the first signal is sent.
static UID: AtomicU32 = AtomicU32::new(0);
static GID: AtomicU32 = AtomicU32::new(0);
static KEEP: AtomicU64 = AtomicU64::new(0);
/// The first errno a thread's drop failed with, 0 while none has.
static FAILED: AtomicI32 = AtomicI32::new(0);

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

const CAP_VERSION_3: u32 = 0x2008_0522;
const PR_CAP_AMBIENT_CLEAR_ALL: libc::c_ulong = 4;

/// The calling thread's drop, with raw system calls only (it runs in a signal handler).
/// Returns 0 or the errno of the step that failed. A thread that already has the user's
/// ids only has its capability sets narrowed (which needs no privilege).
fn drop_this_thread() -> libc::c_int {
    let (uid, gid, keep) = (UID.load(SeqCst), GID.load(SeqCst), KEEP.load(SeqCst));
    // SAFETY: each call below is a plain system call on the calling thread's own
    // credentials, with arguments that are integers or pointers to locals that outlive it;
    // none of them touches memory the interrupted code may be using.
    unsafe {
        let errno = || *libc::__errno_location();
        let (mut r, mut e, mut s) = (0, 0, 0);
        libc::syscall(libc::SYS_getresuid, &mut r, &mut e, &mut s);
        // Already the user (a second signal, or started as the user by a service manager
        // with capabilities): only the capability sets below are left to narrow.
        let already = (r, e, s) == (uid, uid, uid);
        if !already {
            // The bounding set: EINVAL past the kernel's last capability.
            for cap in 0..64 {
                if keep & (1 << cap) == 0 {
                    libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0);
                }
            }
        }
        libc::prctl(libc::PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0);
        if !already
            && (libc::prctl(libc::PR_SET_KEEPCAPS, 1, 0, 0, 0) != 0
                || libc::syscall(libc::SYS_setgroups, 0, std::ptr::null::<libc::gid_t>()) != 0
                || libc::syscall(libc::SYS_setresgid, gid, gid, gid) != 0
                || libc::syscall(libc::SYS_setresuid, uid, uid, uid) != 0)
        {
            return errno();
        }
        let mut hdr = CapHeader {
            version: CAP_VERSION_3,
            pid: 0,
        };
        let set = CapData {
            effective: keep as u32,
            permitted: keep as u32,
            inheritable: 0,
        };
        let hi = CapData {
            effective: (keep >> 32) as u32,
            permitted: (keep >> 32) as u32,
            inheritable: 0,
        };
        let data = [set, hi];
        if libc::syscall(libc::SYS_capset, &mut hdr, data.as_ptr()) != 0
            || libc::prctl(libc::PR_SET_KEEPCAPS, 0, 0, 0, 0) != 0
            || libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0
        {
            return errno();
        }
        0
    }
}

extern "C" fn on_drop_signal(_: libc::c_int) {
    // SAFETY: errno is thread-local; the interrupted code gets its own value back.
    let saved = unsafe { *libc::__errno_location() };
    let r = drop_this_thread();
    if r != 0 {
        let _ = FAILED.compare_exchange(0, r, SeqCst, SeqCst);
    }
    // SAFETY: as above.
    unsafe { *libc::__errno_location() = saved };
}

/// Makes the whole process (every thread) `user`, keeping only those of `keep` that it has
/// (a service manager's bounding set may have taken some already), which it returns.
///
/// # Errors
/// When the process is not root (or lacks `CAP_SETUID`/`CAP_SETGID`), or a thread did not
/// drop within 5 s. The caller must then exit.
pub fn drop_to(user: &User, keep: &[Cap]) -> io::Result<Vec<Cap>> {
    if user.uid == 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("user {} is root: nothing to drop to", user.name),
        ));
    }
    let has = std::fs::read_to_string("/proc/thread-self/status")
        .map(|s| Creds::parse(&s).permitted)
        .unwrap_or(0);
    let keep: Vec<Cap> = keep
        .iter()
        .copied()
        .filter(|&c| has & mask(&[c]) != 0)
        .collect();
    let kept = keep;
    let keep = mask(&kept);
    UID.store(user.uid, SeqCst);
    GID.store(user.gid, SeqCst);
    KEEP.store(keep, SeqCst);
    // SAFETY: a sigaction with our handler, which only makes raw system calls and touches
    // atomics (async-signal-safe); SA_RESTART so that interrupted calls mostly restart.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_drop_signal as extern "C" fn(libc::c_int) as usize;
        sa.sa_flags = libc::SA_RESTART;
        libc::sigemptyset(&mut sa.sa_mask);
        if libc::sigaction(drop_signal(), &sa, std::ptr::null_mut()) != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    let r = drop_this_thread();
    if r != 0 {
        return Err(io::Error::new(
            io::Error::from_raw_os_error(r).kind(),
            format!(
                "becoming user {}: {} (it takes root)",
                user.name,
                io::Error::from_raw_os_error(r)
            ),
        ));
    }
    // SAFETY: getpid(2) has no preconditions.
    let pid = unsafe { libc::getpid() };
    let mut signalled = std::collections::HashSet::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let pending: Vec<libc::pid_t> = threads()?
            .into_iter()
            .filter(|&tid| !thread_dropped(tid, user, keep))
            .collect();
        if pending.is_empty() {
            return Ok(kept);
        }
        let failed = FAILED.load(SeqCst);
        if failed != 0 {
            return Err(io::Error::new(
                io::Error::from_raw_os_error(failed).kind(),
                format!(
                    "a thread could not become user {}: {}",
                    user.name,
                    io::Error::from_raw_os_error(failed)
                ),
            ));
        }
        if Instant::now() > deadline {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "threads {pending:?} did not become user {} in 5 s",
                    user.name
                ),
            ));
        }
        for tid in pending {
            // Once each: real-time signals queue, and one is enough.
            if signalled.insert(tid) {
                // SAFETY: tgkill(2) to a thread of our own process, whose handler is set.
                unsafe { libc::syscall(libc::SYS_tgkill, pid, tid, drop_signal()) };
            }
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// The process's thread ids.
fn threads() -> io::Result<Vec<libc::pid_t>> {
    Ok(std::fs::read_dir("/proc/self/task")?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect())
}

/// Whether thread `tid` has `user`'s ids and exactly `keep` (a thread that has exited
/// counts as dropped).
fn thread_dropped(tid: libc::pid_t, user: &User, keep: u64) -> bool {
    let Ok(status) = std::fs::read_to_string(format!("/proc/self/task/{tid}/status")) else {
        return true;
    };
    let creds = Creds::parse(&status);
    creds.uids == [user.uid; 4]
        && creds.gids == [user.gid; 4]
        && creds.effective == keep
        && creds.permitted == keep
}

/// The credentials `/proc/PID/status` (or a thread's) shows.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Creds {
    /// Real, effective, saved and file-system user ids.
    pub uids: [u32; 4],
    /// The same group ids.
    pub gids: [u32; 4],
    /// Supplementary groups.
    pub groups: Vec<u32>,
    /// `CapEff`.
    pub effective: u64,
    /// `CapPrm`.
    pub permitted: u64,
    /// `CapBnd`.
    pub bounding: u64,
    /// `NoNewPrivs`.
    pub no_new_privs: bool,
}

impl Creds {
    /// Parses the text of a `status` file.
    pub fn parse(status: &str) -> Creds {
        let mut c = Creds::default();
        for line in status.lines() {
            let Some((key, value)) = line.split_once(':') else {
                continue;
            };
            let ids = |out: &mut [u32; 4]| {
                for (o, v) in out.iter_mut().zip(value.split_whitespace()) {
                    *o = v.parse().unwrap_or(u32::MAX);
                }
            };
            let hex = || u64::from_str_radix(value.trim(), 16).unwrap_or(u64::MAX);
            match key {
                "Uid" => ids(&mut c.uids),
                "Gid" => ids(&mut c.gids),
                "Groups" => {
                    c.groups = value
                        .split_whitespace()
                        .filter_map(|g| g.parse().ok())
                        .collect()
                }
                "CapEff" => c.effective = hex(),
                "CapPrm" => c.permitted = hex(),
                "CapBnd" => c.bounding = hex(),
                "NoNewPrivs" => c.no_new_privs = value.trim() == "1",
                _ => {}
            }
        }
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_status_file() {
        let status = "Name:\tisthmus-dp\nUid:\t65534\t65534\t65534\t65534\n\
                      Gid:\t65534\t65534\t65534\t65534\nGroups:\t\nCapInh:\t0000000000000000\n\
                      CapPrm:\t0000000000001400\nCapEff:\t0000000000001400\n\
                      CapBnd:\t0000000000001400\nNoNewPrivs:\t1\n";
        let c = Creds::parse(status);
        assert_eq!(c.uids, [65534; 4]);
        assert_eq!(c.gids, [65534; 4]);
        assert!(c.groups.is_empty());
        assert_eq!(c.effective, mask(&[Cap::NetAdmin, Cap::NetBindService]));
        assert_eq!(c.permitted, 0x1400);
        assert_eq!(c.bounding, 0x1400);
        assert!(c.no_new_privs);
    }

    #[test]
    fn looks_users_up() {
        assert_eq!(User::lookup("root").unwrap().uid, 0);
        let e = User::lookup("no-such-user-isthmus").unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
        assert!(e.to_string().contains("no user"), "{e}");
    }
}
