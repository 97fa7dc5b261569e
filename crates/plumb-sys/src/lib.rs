//! Everything plumb asks of the operating system about a socket, in one place.
//!
//! Each socket option is a safe function over anything that owns a file descriptor
//! (`AsFd`), so the same call works on a `std`, `tokio` or `socket2` socket. Most go
//! through `socket2`; the few that `socket2` does not cover (`TCP_INFO`, `IP_MTU_DISCOVER`) go through
//! tiny `unsafe` helpers in [`raw`], each with a `SAFETY` comment. Passing listening
//! sockets to a successor process (`SCM_RIGHTS`) goes through `nix`, with the one
//! adoption of received descriptors in [`raw`]. No other plumb crate contains
//! `unsafe` code.
//!
//! Only Linux is supported: plumb reads Linux-specific TCP state (`TCP_INFO`,
//! `TCP_USER_TIMEOUT`). On other targets the crate does not build.
#![allow(unsafe_code, reason = "this crate is where plumb's unsafe code lives")]
#![warn(missing_docs)]

mod raw;
mod tcp_info;

use std::io;
use std::os::fd::AsFd;
use std::time::Duration;

use socket2::{SockRef, TcpKeepalive};

pub use tcp_info::TcpInfo;

/// TCP keepalive settings: how long a connection may be silent before the kernel
/// starts probing it, how often it probes, and how many unanswered probes end it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Keepalive {
    /// Silence before the first probe (`TCP_KEEPIDLE`).
    pub idle: Duration,
    /// Time between probes (`TCP_KEEPINTVL`).
    pub interval: Duration,
    /// Unanswered probes before the kernel drops the connection (`TCP_KEEPCNT`).
    pub count: u32,
}

/// Turns on `SO_KEEPALIVE` with the given timings.
pub fn set_keepalive(sock: &impl AsFd, ka: Keepalive) -> io::Result<()> {
    let params = TcpKeepalive::new()
        .with_time(ka.idle)
        .with_interval(ka.interval)
        .with_retries(ka.count);
    SockRef::from(sock).set_tcp_keepalive(&params)
}

/// Reads back the keepalive settings, or `None` when `SO_KEEPALIVE` is off.
pub fn keepalive(sock: &impl AsFd) -> io::Result<Option<Keepalive>> {
    let s = SockRef::from(sock);
    if !s.keepalive()? {
        return Ok(None);
    }
    Ok(Some(Keepalive {
        idle: s.tcp_keepalive_time()?,
        interval: s.tcp_keepalive_interval()?,
        count: s.tcp_keepalive_retries()?,
    }))
}

/// Sets `TCP_USER_TIMEOUT`: the longest time sent data (or a keepalive probe) may stay
/// unacknowledged before the kernel gives up on the connection with `ETIMEDOUT`.
/// This is what bounds a black-holed peer once data is in flight.
pub fn set_user_timeout(sock: &impl AsFd, timeout: Duration) -> io::Result<()> {
    SockRef::from(sock).set_tcp_user_timeout(Some(timeout))
}

/// Reads back `TCP_USER_TIMEOUT` (`None` when unset, the kernel default).
pub fn user_timeout(sock: &impl AsFd) -> io::Result<Option<Duration>> {
    SockRef::from(sock).tcp_user_timeout()
}

/// Sets `TCP_MAXSEG`. On a listening socket, or a socket before `connect`, this caps
/// the MSS advertised in the SYN (or SYN-ACK), so the peer never sends segments larger
/// than a path can carry: the fix for an MTU black hole between the two ends.
pub fn set_mss(sock: &impl AsFd, mss: u32) -> io::Result<()> {
    SockRef::from(sock).set_tcp_mss(mss)
}

/// Reads `TCP_MAXSEG`: before the handshake, the configured clamp (or the default);
/// after it, the MSS in use for sending.
pub fn mss(sock: &impl AsFd) -> io::Result<u32> {
    SockRef::from(sock).tcp_mss()
}

/// Clears the don't-fragment bit on the socket's packets (`IP_MTU_DISCOVER` /
/// `IPV6_MTU_DISCOVER` = `PMTUDISC_DONT`): a router on a smaller-MTU path then
/// fragments instead of dropping and sending ICMP "fragmentation needed". If a
/// request that stalled goes through this way, the path's ICMP is being lost. For
/// IPv6 routers never fragment; the option only stops the kernel's own PMTU use.
pub fn set_dont_fragment_off(sock: &impl AsFd, ipv6: bool) -> io::Result<()> {
    let (level, name, value) = if ipv6 {
        (
            libc::IPPROTO_IPV6,
            libc::IPV6_MTU_DISCOVER,
            libc::IPV6_PMTUDISC_DONT,
        )
    } else {
        (
            libc::IPPROTO_IP,
            libc::IP_MTU_DISCOVER,
            libc::IP_PMTUDISC_DONT,
        )
    };
    raw::setsockopt_int(sock.as_fd(), level, name, value)
}

/// Arms `SO_LINGER` with a zero timeout, so that closing the socket sends an RST
/// instead of a FIN and discards unsent data. This is how plumb passes a reset on.
pub fn set_linger_zero(sock: &impl AsFd) -> io::Result<()> {
    SockRef::from(sock).set_linger(Some(Duration::ZERO))
}

/// Reads `SO_LINGER` (`Some(0)` after [`set_linger_zero`]).
pub fn linger(sock: &impl AsFd) -> io::Result<Option<Duration>> {
    SockRef::from(sock).linger()
}

/// Half-closes the sending side (`shutdown(SHUT_WR)`): the peer reads EOF, and can
/// still send to us.
pub fn shutdown_write(sock: &impl AsFd) -> io::Result<()> {
    SockRef::from(sock).shutdown(std::net::Shutdown::Write)
}

/// Peeks at the receive queue without waiting and without consuming anything
/// (`recv(MSG_PEEK | MSG_DONTWAIT)`): `Ok(0)` means the peer closed, `WouldBlock`
/// that nothing is queued, `Ok(n)` that data waits.
pub fn peek_now(sock: &impl AsFd) -> io::Result<usize> {
    let mut buf = [std::mem::MaybeUninit::<u8>::uninit(); 1];
    SockRef::from(sock).recv_with_flags(&mut buf, libc::MSG_PEEK | libc::MSG_DONTWAIT)
}

/// Takes and clears the socket's pending error (`SO_ERROR`).
pub fn take_error(sock: &impl AsFd) -> io::Result<Option<io::Error>> {
    SockRef::from(sock).take_error()
}

/// Reads what the socket has into the unfilled part of `buf` (one `recv`), without
/// zeroing the buffer first, as tokio does for its own sockets; returns the count
/// (0: end of stream). For a socket shared with `Arc` (plumb reads its `TCP_INFO`
/// while hyper drives it), where tokio's `try_read` needs an initialised slice.
pub fn recv_into(sock: &impl AsFd, buf: &mut tokio::io::ReadBuf<'_>) -> io::Result<usize> {
    raw::recv_into(sock.as_fd(), buf)
}

/// Reads `TCP_INFO`: the kernel's view of the connection (RTT, retransmissions, MSS,
/// path MTU...). Fields the running kernel does not know are left at zero.
pub fn tcp_info(sock: &impl AsFd) -> io::Result<TcpInfo> {
    tcp_info::read(sock.as_fd())
}

/// Sends SIGKILL to every process of the process group `pgid` (a child started as
/// the leader of its own group, so that its children go too). Refuses 0 and 1,
/// which `killpg` would read as this process's own group and init's.
pub fn kill_process_group(pgid: u32) -> io::Result<()> {
    let pgid = libc::pid_t::try_from(pgid)
        .ok()
        .filter(|p| *p > 1)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "not a process group id"))?;
    raw::killpg(pgid, libc::SIGKILL)
}

/// Gives memory the allocators hold free back to the kernel: jemalloc's (the
/// `plumb` binary's allocator) by purging every arena, and glibc's heap with
/// `malloc_trim` (what other users of this crate allocate from). After a burst of
/// connections has closed, an allocator keeps their buffers for reuse: resident
/// memory would stay at the burst's peak (jemalloc would hand them back on its own
/// only after its decay time, in steps). HAProxy trims the same way when it releases
/// its pools.
pub fn release_free_memory() {
    let _ = raw::jemalloc_purge();
    raw::malloc_trim();
}

/// The most descriptors [`recv_with_fds`] accepts in one message: Linux's own
/// limit (`SCM_MAX_FD`). A binary upgrade hands over one listening socket per
/// address and worker, and the admin API's.
pub const MAX_PASSED_FDS: usize = 253;

/// Sends `bytes` and a copy of each of `fds` (`SCM_RIGHTS`) in one message on a
/// Unix stream socket: how a running plumb hands its listening sockets to its
/// successor.
pub fn send_with_fds(
    sock: &std::os::unix::net::UnixStream,
    bytes: &[u8],
    fds: &[std::os::fd::BorrowedFd<'_>],
) -> io::Result<()> {
    use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
    use std::os::fd::AsRawFd;
    if fds.len() > MAX_PASSED_FDS {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("at most {MAX_PASSED_FDS} descriptors in one message"),
        ));
    }
    let raw: Vec<std::os::fd::RawFd> = fds.iter().map(AsRawFd::as_raw_fd).collect();
    let cmsgs = if raw.is_empty() {
        Vec::new()
    } else {
        vec![ControlMessage::ScmRights(&raw)]
    };
    let iov = [io::IoSlice::new(bytes)];
    let sent = sendmsg::<()>(sock.as_raw_fd(), &iov, &cmsgs, MsgFlags::empty(), None)
        .map_err(io::Error::from)?;
    if sent != bytes.len() {
        return Err(io::Error::new(
            io::ErrorKind::WriteZero,
            "message sent only in part",
        ));
    }
    Ok(())
}

/// The user id of the process at the other end of a Unix socket (`SO_PEERCRED`).
pub fn peer_uid(sock: &std::os::unix::net::UnixStream) -> io::Result<u32> {
    let cred = nix::sys::socket::getsockopt(sock, nix::sys::socket::sockopt::PeerCredentials)
        .map_err(io::Error::from)?;
    Ok(cred.uid())
}

/// Receives one message sent with [`send_with_fds`]: its bytes (into `buf`) and
/// the descriptors that came with it, owned by the caller (close-on-exec).
pub fn recv_with_fds(
    sock: &std::os::unix::net::UnixStream,
    buf: &mut [u8],
) -> io::Result<(usize, Vec<std::os::fd::OwnedFd>)> {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
    use std::os::fd::AsRawFd;
    let mut space = nix::cmsg_space!([std::os::fd::RawFd; MAX_PASSED_FDS]);
    let mut iov = [io::IoSliceMut::new(buf)];
    let msg = recvmsg::<()>(
        sock.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )
    .map_err(io::Error::from)?;
    let mut fds = Vec::new();
    for c in msg.cmsgs().map_err(io::Error::from)? {
        if let ControlMessageOwned::ScmRights(got) = c {
            fds.extend(got);
        }
    }
    let truncated = msg.flags.contains(MsgFlags::MSG_CTRUNC);
    let n = msg.bytes;
    let fds = raw::adopt(fds);
    if truncated {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "descriptors were cut off (more than the buffer holds)",
        ));
    }
    Ok((n, fds))
}

/// The kernel's TCP counters for this network namespace, from `/proc/net/netstat`
/// (`TcpExt`) and `/proc/net/snmp` (`Tcp`). These are what showed incident 003: SYNs
/// dropped because an accept queue overflowed, and retransmissions.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KernelTcpCounters {
    /// `TcpExtListenOverflows`: connections dropped because an accept queue was full.
    pub listen_overflows: u64,
    /// `TcpExtListenDrops`: SYNs dropped at a listening socket, for any reason.
    pub listen_drops: u64,
    /// `TcpRetransSegs`: segments retransmitted.
    pub retrans_segs: u64,
    /// `TcpExtTCPTimeouts`: retransmission timeouts.
    pub timeouts: u64,
    /// `TcpExtTCPSynRetrans`: SYN and SYN-ACK retransmissions.
    pub syn_retrans: u64,
}

/// Reads [`KernelTcpCounters`] from `/proc/net`.
pub fn kernel_tcp_counters() -> io::Result<KernelTcpCounters> {
    let netstat = std::fs::read_to_string("/proc/net/netstat")?;
    let snmp = std::fs::read_to_string("/proc/net/snmp")?;
    Ok(parse_kernel_counters(&netstat, &snmp))
}

/// Parses the `Prefix: names...` / `Prefix: values...` line pairs of `/proc/net`.
fn proc_net_value(text: &str, prefix: &str, name: &str) -> Option<u64> {
    let mut lines = text.lines().filter(|l| l.starts_with(prefix));
    let (names, values) = (lines.next()?, lines.next()?);
    let idx = names.split_whitespace().position(|n| n == name)?;
    values.split_whitespace().nth(idx)?.parse().ok()
}

fn parse_kernel_counters(netstat: &str, snmp: &str) -> KernelTcpCounters {
    let ext = |name| proc_net_value(netstat, "TcpExt:", name).unwrap_or(0);
    KernelTcpCounters {
        listen_overflows: ext("ListenOverflows"),
        listen_drops: ext("ListenDrops"),
        retrans_segs: proc_net_value(snmp, "Tcp:", "RetransSegs").unwrap_or(0),
        timeouts: ext("TCPTimeouts"),
        syn_retrans: ext("TCPSynRetrans"),
    }
}

#[cfg(test)]
mod proc_tests {
    use super::*;

    #[test]
    fn parses_proc_net_pairs() {
        let netstat = "TcpExt: SyncookiesSent ListenOverflows ListenDrops TCPTimeouts TCPSynRetrans\nTcpExt: 0 7 9 3 2\nIpExt: InNoRoutes\nIpExt: 0\n";
        let snmp = "Ip: Forwarding\nIp: 1\nTcp: RtoAlgorithm RetransSegs\nTcp: 1 42\n";
        let c = parse_kernel_counters(netstat, snmp);
        assert_eq!(
            c,
            KernelTcpCounters {
                listen_overflows: 7,
                listen_drops: 9,
                retrans_segs: 42,
                timeouts: 3,
                syn_retrans: 2
            }
        );
        assert_eq!(parse_kernel_counters("", ""), KernelTcpCounters::default());
        // This machine's own files parse.
        assert!(kernel_tcp_counters().is_ok());
    }
}

/// A kernel pipe through which a tunnel moves bytes from one socket to another
/// without copying them into user space (`splice(2)`): socket to pipe, pipe to
/// socket. Both ends are non-blocking; a pipe holds at most [`PIPE_CAPACITY`] bytes.
#[derive(Debug)]
pub struct Pipe {
    read: std::os::fd::OwnedFd,
    write: std::os::fd::OwnedFd,
}

/// What a fresh Linux pipe holds (16 pages).
pub const PIPE_CAPACITY: usize = 64 * 1024;

impl Pipe {
    /// A new non-blocking pipe (two file descriptors).
    pub fn new() -> io::Result<Pipe> {
        let (read, write) =
            nix::unistd::pipe2(nix::fcntl::OFlag::O_NONBLOCK | nix::fcntl::OFlag::O_CLOEXEC)?;
        Ok(Pipe { read, write })
    }

    /// Moves up to `len` bytes that have arrived on socket `src` into the pipe.
    /// `Ok(0)`: the peer sent FIN. `WouldBlock`: nothing to move now.
    pub fn fill(&self, src: &impl AsFd, len: usize) -> io::Result<usize> {
        splice(src.as_fd(), self.write.as_fd(), len)
    }

    /// Moves up to `len` bytes from the pipe into socket `dst`. `WouldBlock`: the
    /// socket's send buffer is full.
    pub fn drain(&self, dst: &impl AsFd, len: usize) -> io::Result<usize> {
        splice(self.read.as_fd(), dst.as_fd(), len)
    }
}

/// One non-blocking `splice(2)` of up to `len` bytes, without offsets (sockets and
/// pipes have none).
fn splice(
    from: std::os::fd::BorrowedFd<'_>,
    to: std::os::fd::BorrowedFd<'_>,
    len: usize,
) -> io::Result<usize> {
    let flags =
        nix::fcntl::SpliceFFlags::SPLICE_F_MOVE | nix::fcntl::SpliceFFlags::SPLICE_F_NONBLOCK;
    Ok(nix::fcntl::splice(from, None, to, None, len, flags)?)
}

#[cfg(test)]
mod pipe_tests {
    use super::*;
    use std::io::{Read, Write};

    /// Bytes written on one TCP connection come out of another, through the pipe,
    /// unchanged; FIN reads as 0.
    #[test]
    fn splice_moves_bytes_between_two_sockets() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut a = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (a_peer, _) = l.accept().unwrap();
        let b = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (mut b_peer, _) = l.accept().unwrap();
        let pipe = Pipe::new().unwrap();
        let data: Vec<u8> = (0..50_000u32).map(|i| (i % 253) as u8).collect();
        a.write_all(&data).unwrap();
        a.shutdown(std::net::Shutdown::Write).unwrap();
        let mut moved = 0;
        loop {
            let n = pipe.fill(&a_peer, PIPE_CAPACITY).unwrap();
            if n == 0 {
                break;
            }
            let mut left = n;
            while left > 0 {
                left -= pipe.drain(&b, left).unwrap();
            }
            moved += n;
        }
        assert_eq!(moved, data.len());
        b.shutdown(std::net::Shutdown::Write).unwrap();
        let mut got = Vec::new();
        b_peer.read_to_end(&mut got).unwrap();
        assert!(got == data, "the bytes changed on the way");
    }

    /// A non-blocking socket with nothing to read says so instead of blocking.
    #[test]
    fn an_empty_socket_would_block() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let _a = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (a_peer, _) = l.accept().unwrap();
        a_peer.set_nonblocking(true).unwrap();
        let pipe = Pipe::new().unwrap();
        let e = pipe.fill(&a_peer, PIPE_CAPACITY).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
    }
}

#[cfg(test)]
mod fd_passing_tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::fd::AsFd;

    #[test]
    fn a_listening_socket_crosses_a_unix_socket_and_still_accepts() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        send_with_fds(&a, b"one listener", &[listener.as_fd()]).unwrap();
        drop(listener);
        let mut buf = [0u8; 64];
        let (n, fds) = recv_with_fds(&b, &mut buf).unwrap();
        assert_eq!(&buf[..n], b"one listener");
        assert_eq!(fds.len(), 1);
        let received = std::net::TcpListener::from(fds.into_iter().next().unwrap());
        assert_eq!(received.local_addr().unwrap(), addr);
        let mut client = std::net::TcpStream::connect(addr).unwrap();
        let (mut served, _) = received.accept().unwrap();
        client.write_all(b"x").unwrap();
        let mut got = [0u8; 1];
        served.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"x");
    }
}

#[cfg(test)]
mod memory_tests {
    /// The purge control exists under the name used (a wrong name would make
    /// `release_free_memory` silently do nothing for jemalloc).
    #[test]
    fn jemalloc_accepts_the_purge_control() {
        assert_eq!(super::raw::jemalloc_purge(), 0);
    }
}
