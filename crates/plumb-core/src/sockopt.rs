//! Applying a leg's configured TCP options to a socket. The options themselves are
//! plumb-sys functions; this module decides which apply where and logs (never fails)
//! when the kernel refuses one.

use std::os::fd::AsFd;

use plumb_config::model::TcpOptions;

/// Options for an established connection: no Nagle delay, keepalive, user timeout.
pub(crate) fn apply_established(sock: &impl AsFd, opts: &TcpOptions) {
    if let Err(e) = socket2::SockRef::from(sock).set_tcp_nodelay(true) {
        tracing::debug!(error = %e, "cannot set TCP_NODELAY");
    }
    if let Some(ka) = opts.keepalive {
        let ka = plumb_sys::Keepalive {
            idle: ka.idle,
            interval: ka.interval,
            count: ka.count,
        };
        if let Err(e) = plumb_sys::set_keepalive(sock, ka) {
            tracing::debug!(error = %e, "cannot set TCP keepalive");
        }
    }
    if let Some(t) = opts.user_timeout {
        if let Err(e) = plumb_sys::set_user_timeout(sock, t) {
            tracing::debug!(error = %e, "cannot set TCP_USER_TIMEOUT");
        }
    }
}

/// Options that must be set before the handshake: the MSS clamp.
pub(crate) fn apply_before_handshake(sock: &impl AsFd, opts: &TcpOptions) -> std::io::Result<()> {
    if let Some(mss) = opts.mss {
        plumb_sys::set_mss(sock, mss)?;
    }
    Ok(())
}

/// Closes a socket with an RST: arms `SO_LINGER` 0; the close happens on drop.
pub(crate) fn arm_reset(sock: &impl AsFd) {
    if let Err(e) = plumb_sys::set_linger_zero(sock) {
        tracing::debug!(error = %e, "cannot arm SO_LINGER 0");
    }
}

/// Sends FIN (half-close); errors mean the socket is already gone and are ignored.
pub(crate) fn send_fin(sock: &impl AsFd) {
    let _ = plumb_sys::shutdown_write(sock);
}
