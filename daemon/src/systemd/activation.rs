//! Socket activation: taking the control socket that `oetd.socket` created from fd 3.

use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixListener;

use nix::sys::socket::{getsockopt, sockopt, SockType};
use nix::sys::stat::{fstat, SFlag};

use super::error::Error;

/// Takes the listening socket passed by systemd (`LISTEN_FDS=1`, `LISTEN_PID` = our PID,
/// the socket at fd 3), or `Ok(None)` when oetd was not socket-activated.
///
/// The descriptor is checked to be a listening `AF_UNIX` stream socket and marked
/// close-on-exec; `LISTEN_FDS`, `LISTEN_PID` and `LISTEN_FDNAMES` are removed from the
/// environment (also when `LISTEN_PID` names another process), so a second call returns
/// `Ok(None)` and children never see them. Call at the top of `main`, before any other
/// thread exists. The listener is blocking: call `set_nonblocking(true)` before handing it
/// to `tokio::net::UnixListener::from_std`.
pub fn listen_fds() -> Result<Option<UnixListener>, Error> {
    // SAFETY (the crate's precondition for removing variables): the caller runs this
    // before any other thread is started.
    let fds = unsafe { sd_notify::listen_fds_and_unset_env() };
    std::env::remove_var("LISTEN_FDNAMES");
    let fds: Vec<RawFd> = fds.map_err(Error::ListenEnv)?.collect();
    match fds.as_slice() {
        [] => Ok(None),
        [fd] => {
            check_listening_unix_stream(*fd)?;
            // SAFETY: systemd handed this descriptor to us; the variables that named it are
            // gone, so nothing else in the process will take ownership of it.
            let owned = unsafe { OwnedFd::from_raw_fd(*fd) };
            Ok(Some(UnixListener::from(owned)))
        }
        many => Err(Error::TooManyListenFds(many.len())),
    }
}

fn check_listening_unix_stream(fd: RawFd) -> Result<(), Error> {
    let stat = fstat(fd).map_err(Error::InspectListenFd)?;
    if SFlag::from_bits_truncate(stat.st_mode) & SFlag::S_IFMT != SFlag::S_IFSOCK {
        return Err(Error::WrongListenSocket("not a socket"));
    }
    // SAFETY: `fd` is open (fstat succeeded) and only borrowed for these calls.
    let borrowed = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
    if socket_domain(fd)? != libc::AF_UNIX {
        return Err(Error::WrongListenSocket("not a Unix-domain socket"));
    }
    if getsockopt(&borrowed, sockopt::SockType).map_err(Error::InspectListenFd)? != SockType::Stream
    {
        return Err(Error::WrongListenSocket("not a stream socket"));
    }
    if !getsockopt(&borrowed, sockopt::AcceptConn).map_err(Error::InspectListenFd)? {
        return Err(Error::WrongListenSocket("not listening"));
    }
    Ok(())
}

/// `SO_DOMAIN`, which nix does not wrap.
fn socket_domain(fd: RawFd) -> Result<libc::c_int, Error> {
    let mut domain: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `domain` and `len` are valid for writes of the sizes given.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_DOMAIN,
            (&mut domain as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if rc < 0 {
        return Err(Error::InspectListenFd(nix::Error::last()));
    }
    Ok(domain)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::systemd::child;
    use std::io::{Read, Write};
    use std::os::fd::AsRawFd;
    use std::os::unix::net::{UnixDatagram, UnixStream};

    const CHILD: &str = "systemd::activation::tests::listen_fds_child";

    fn run_child(fd: RawFd, listen_pid: &str) -> String {
        let mut cmd = child::command(
            &format!("export LISTEN_FDS=1 LISTEN_PID={listen_pid} LISTEN_FDNAMES=oetd.socket;"),
            CHILD,
        );
        crate::process::pass_fd(&mut cmd, fd, 3);
        String::from_utf8_lossy(&child::run(cmd).stdout).into_owned()
    }

    /// A listener bound by the test, passed as fd 3 the way systemd does: the child takes
    /// it, serves one connection on it, and reports that the variables are gone.
    #[test]
    fn takes_a_listening_unix_socket_from_fd3() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("oetd.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let client = std::thread::spawn(move || {
            let mut stream = UnixStream::connect(&path).expect("connect to the passed socket");
            let mut reply = String::new();
            stream.read_to_string(&mut reply).expect("read the reply");
            reply
        });
        let out = run_child(listener.as_raw_fd(), "$$");
        assert!(
            out.contains("result=listener cloexec=true env=clean"),
            "{out}"
        );
        assert_eq!(client.join().unwrap(), "served by the activated child");
    }

    #[test]
    fn another_process_listen_pid_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let listener = UnixListener::bind(dir.path().join("oetd.sock")).unwrap();
        let out = run_child(listener.as_raw_fd(), "1");
        assert!(out.contains("result=none env=clean"), "{out}");
    }

    #[test]
    fn a_socket_that_is_not_listening_is_refused() {
        let (a, _b) = UnixStream::pair().unwrap();
        let out = run_child(a.as_raw_fd(), "$$");
        assert!(
            out.contains("error=") && out.contains("not listening"),
            "{out}"
        );
    }

    #[test]
    fn a_datagram_socket_is_refused() {
        let (a, _b) = UnixDatagram::pair().unwrap();
        let out = run_child(a.as_raw_fd(), "$$");
        assert!(out.contains("not a stream socket"), "{out}");
    }

    #[test]
    fn a_plain_file_is_refused() {
        let file = tempfile::tempfile().unwrap();
        let out = run_child(file.as_raw_fd(), "$$");
        assert!(out.contains("is not a socket"), "{out}");
    }

    #[test]
    #[ignore = "runs in a child process started by the listen_fds tests"]
    fn listen_fds_child() {
        if !child::is_child() {
            return;
        }
        let result = listen_fds();
        let env_clean = ["LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES"]
            .iter()
            .all(|v| std::env::var_os(v).is_none());
        let env = if env_clean { "clean" } else { "left set" };
        match result {
            Ok(Some(listener)) => {
                // SAFETY: plain fcntl query on an open descriptor.
                let flags = unsafe { libc::fcntl(listener.as_raw_fd(), libc::F_GETFD) };
                let cloexec = flags >= 0 && flags & libc::FD_CLOEXEC != 0;
                println!("result=listener cloexec={cloexec} env={env}");
                let (mut stream, _) = listener.accept().unwrap();
                stream.write_all(b"served by the activated child").unwrap();
                assert!(
                    matches!(listen_fds(), Ok(None)),
                    "a second call must find nothing"
                );
            }
            Ok(None) => println!("result=none env={env}"),
            Err(e) => println!("error={e} env={env}"),
        }
    }
}
