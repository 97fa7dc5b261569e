//! Opening connections to backends: socket options before and after the handshake,
//! the connect timer, and the cause of a failure.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::{TcpSocket, TcpStream};

use plumb_config::model::TcpOptions;

use crate::cause::Cause;
use crate::sockopt;

/// A failed connect.
#[derive(Debug, thiserror::Error)]
#[error("connect to {addr} failed ({cause}): {source}")]
pub struct ConnectError {
    /// The backend.
    pub addr: SocketAddr,
    /// What kind of failure.
    pub cause: Cause,
    /// The error underneath (a synthetic `TimedOut` for our own timer).
    #[source]
    pub source: io::Error,
}

/// Connects to `addr` within `timeout`, with the pool's socket options applied.
pub async fn connect(
    addr: SocketAddr,
    opts: &TcpOptions,
    timeout: Duration,
) -> Result<TcpStream, ConnectError> {
    let fail = |cause: Cause, source: io::Error| ConnectError {
        addr,
        cause,
        source,
    };
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
    .map_err(|e| fail(Cause::UpstreamConnectError, e))?;
    sockopt::apply_before_handshake(&socket, opts)
        .map_err(|e| fail(Cause::UpstreamConnectError, e))?;
    let stream = match tokio::time::timeout(timeout, socket.connect(addr)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return Err(fail(Cause::of_connect_error(&e), e)),
        Err(_) => {
            return Err(fail(
                Cause::UpstreamConnectTimeout,
                io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("no handshake within {}ms", timeout.as_millis()),
                ),
            ))
        }
    };
    sockopt::apply_established(&stream, opts);
    Ok(stream)
}
