//! The PROXY protocol (v1 text, v2 binary): reading the header a trusted front puts
//! before the client's bytes, and writing one to backends. Parsing and building are
//! the `ppp` crate's; this module reads exactly the header's bytes from the socket,
//! never one more, so the client's own bytes stay in the kernel buffer untouched.

use std::io;
use std::net::{IpAddr, SocketAddr};

use ppp::{v1, v2};
use tokio::io::{AsyncRead, AsyncReadExt};

use plumb_config::model::ProxyVersion;

/// The v2 signature.
const V2_SIGNATURE: [u8; 12] = [
    0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A,
];
/// The longest v1 header, CRLF included.
const V1_MAX: usize = 107;
/// The longest v2 header plumb accepts (addresses plus generous TLVs).
const V2_MAX: usize = 16 + 2048;

/// What a PROXY header said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProxyHeader {
    /// The original client, or `None` for `UNKNOWN` / `LOCAL` (health checks of the
    /// front itself): the peer address stands.
    pub source: Option<SocketAddr>,
    /// The address the client connected to on the front.
    pub destination: Option<SocketAddr>,
}

/// Why a header could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ProxyHeaderError {
    /// The socket failed or closed before the header was complete.
    #[error("reading PROXY header: {0}")]
    Io(#[from] io::Error),
    /// The bytes are not a valid header.
    #[error("malformed PROXY header: {0}")]
    Malformed(String),
}

/// Reads one PROXY header (v1 or v2) and nothing after it.
pub async fn read_header<R: AsyncRead + Unpin>(r: &mut R) -> Result<ProxyHeader, ProxyHeaderError> {
    let mut buf = vec![0u8; 12];
    r.read_exact(&mut buf).await?;
    if buf[..] == V2_SIGNATURE {
        let mut rest = [0u8; 4];
        r.read_exact(&mut rest).await?;
        buf.extend_from_slice(&rest);
        let len = usize::from(u16::from_be_bytes([rest[2], rest[3]]));
        if 16 + len > V2_MAX {
            return Err(ProxyHeaderError::Malformed(format!(
                "v2 header of {len} bytes is too long"
            )));
        }
        let start = buf.len();
        buf.resize(start + len, 0);
        r.read_exact(&mut buf[start..]).await?;
        let h = v2::Header::try_from(&buf[..])
            .map_err(|e| ProxyHeaderError::Malformed(e.to_string()))?;
        return Ok(match (h.command, h.addresses) {
            (v2::Command::Proxy, v2::Addresses::IPv4(a)) => ProxyHeader {
                source: Some(SocketAddr::new(IpAddr::V4(a.source_address), a.source_port)),
                destination: Some(SocketAddr::new(
                    IpAddr::V4(a.destination_address),
                    a.destination_port,
                )),
            },
            (v2::Command::Proxy, v2::Addresses::IPv6(a)) => ProxyHeader {
                source: Some(SocketAddr::new(IpAddr::V6(a.source_address), a.source_port)),
                destination: Some(SocketAddr::new(
                    IpAddr::V6(a.destination_address),
                    a.destination_port,
                )),
            },
            _ => ProxyHeader {
                source: None,
                destination: None,
            },
        });
    }
    if !buf.starts_with(b"PROXY ") {
        return Err(ProxyHeaderError::Malformed(
            "no PROXY protocol signature".to_string(),
        ));
    }
    // v1: read up to CRLF, one byte at a time so nothing after the header is consumed.
    while !buf.ends_with(b"\r\n") {
        if buf.len() >= V1_MAX {
            return Err(ProxyHeaderError::Malformed(
                "v1 header longer than 107 bytes".to_string(),
            ));
        }
        let mut b = [0u8; 1];
        r.read_exact(&mut b).await?;
        buf.push(b[0]);
    }
    // Only printable ASCII and single spaces before the final CRLF: anything else is
    // malformed, and checked here so the parser never sees it.
    let body = &buf[..buf.len() - 2];
    if !body.iter().all(|b| b.is_ascii_graphic() || *b == b' ') {
        return Err(ProxyHeaderError::Malformed(
            "v1 header has a byte that is not printable ASCII".to_string(),
        ));
    }
    let h =
        v1::Header::try_from(&buf[..]).map_err(|e| ProxyHeaderError::Malformed(e.to_string()))?;
    Ok(match h.addresses {
        v1::Addresses::Tcp4(a) => ProxyHeader {
            source: Some(SocketAddr::new(IpAddr::V4(a.source_address), a.source_port)),
            destination: Some(SocketAddr::new(
                IpAddr::V4(a.destination_address),
                a.destination_port,
            )),
        },
        v1::Addresses::Tcp6(a) => ProxyHeader {
            source: Some(SocketAddr::new(IpAddr::V6(a.source_address), a.source_port)),
            destination: Some(SocketAddr::new(
                IpAddr::V6(a.destination_address),
                a.destination_port,
            )),
        },
        v1::Addresses::Unknown => ProxyHeader {
            source: None,
            destination: None,
        },
    })
}

/// Builds the header that tells a backend who the client is. Mixed address families
/// (an IPv6 client on an IPv4 listener address, say) are sent as IPv6, with the IPv4
/// side mapped.
pub fn build_header(version: ProxyVersion, source: SocketAddr, destination: SocketAddr) -> Vec<u8> {
    let (source, destination) = same_family(source, destination);
    match version {
        ProxyVersion::V1 => v1::Addresses::from((source, destination))
            .to_string()
            .into_bytes(),
        ProxyVersion::V2 => v2::Builder::with_addresses(
            v2::Version::Two | v2::Command::Proxy,
            v2::Protocol::Stream,
            (source, destination),
        )
        .build()
        // Building into a Vec cannot fail; fall back to a LOCAL header if it ever does.
        .unwrap_or_else(|_| {
            let mut h = V2_SIGNATURE.to_vec();
            h.extend_from_slice(&[0x20, 0x00, 0x00, 0x00]);
            h
        }),
    }
}

fn same_family(a: SocketAddr, b: SocketAddr) -> (SocketAddr, SocketAddr) {
    let v6 = |s: SocketAddr| match s {
        SocketAddr::V4(v4) => SocketAddr::new(IpAddr::V6(v4.ip().to_ipv6_mapped()), v4.port()),
        v6 => v6,
    };
    if a.is_ipv4() == b.is_ipv4() {
        (a, b)
    } else {
        (v6(a), v6(b))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Any bytes after a PROXY signature: an error or a header, never a panic.
        #[test]
        fn arbitrary_bytes_never_panic(tail in proptest::collection::vec(any::<u8>(), 0..300), v2 in any::<bool>()) {
            let mut bytes = if v2 { V2_SIGNATURE.to_vec() } else { b"PROXY ".to_vec() };
            bytes.extend_from_slice(&tail);
            let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
            let _ = rt.block_on(async { let mut r = &bytes[..]; read_header(&mut r).await });
        }
    }

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[tokio::test]
    async fn v1_and_v2_round_trip_and_leave_the_payload() {
        for version in [ProxyVersion::V1, ProxyVersion::V2] {
            for (src, dst) in [
                (addr("192.0.2.7:51000"), addr("127.0.0.1:8080")),
                (addr("[2001:db8::7]:51000"), addr("[::1]:8080")),
                (addr("[2001:db8::7]:51000"), addr("127.0.0.1:8080")),
            ] {
                let mut bytes = build_header(version, src, dst);
                bytes.extend_from_slice(b"hello");
                let mut r = &bytes[..];
                let h = read_header(&mut r).await.unwrap();
                let (want_src, want_dst) = same_family(src, dst);
                assert_eq!(h.source, Some(want_src), "{version:?}");
                assert_eq!(h.destination, Some(want_dst), "{version:?}");
                assert_eq!(r, b"hello", "{version:?}: payload must be untouched");
            }
        }
    }

    #[tokio::test]
    async fn garbage_and_truncation_are_errors_not_panics() {
        for bad in [
            &b"GET / HTTP/1.1\r\n\r\n"[..],
            b"PROXY TCP4 1.2.3.4\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2",
            b"PROXY TCP9 1.2.3.4 5.6.7.8 1 2\r\n",
            &[
                0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A, 0x21, 0x11,
                0x00, 0x40, 1, 2,
            ],
            b"",
        ] {
            let mut r = bad;
            assert!(read_header(&mut r).await.is_err(), "{bad:?}");
        }
        // A CR inside the header, then a non-ASCII byte: once a panic inside the parser.
        let mut r = &b"PROXY \r\xc3\xa9 TCP4 1.2.3.4 5.6.7.8 1 2\r\n"[..];
        assert!(matches!(
            read_header(&mut r).await,
            Err(ProxyHeaderError::Malformed(_))
        ));
        let mut long = b"PROXY ".to_vec();
        long.extend(std::iter::repeat_n(b'1', 200));
        let mut r = &long[..];
        assert!(matches!(
            read_header(&mut r).await,
            Err(ProxyHeaderError::Malformed(_))
        ));
    }
}
