//! Every byte, both ways, under load: 100 concurrent connections each send 16 MiB of
//! random data to an echo backend through plumb while reading the echo back, and each
//! gets back exactly what it sent: same length, same bytes, in order, then EOF.
//!
//! Each connection's data is a random stream from its own seed, generated chunk by
//! chunk on both sides (100 connections do not hold 3 GiB of buffers). The reader
//! regenerates the stream and compares every received byte with it, which is
//! stronger than comparing digests (it also says where the first difference is) and
//! cheap in a debug build, where SHA-256 runs at about 30 MB/s: hashing the 3.2 GiB
//! sent and received took this test from about 12 s to about 100 s on 2 cores.
//! Distinct seeds mean bytes crossing between connections are caught too.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test helpers: a panic is the failure report"
)]

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::support::{config, echo, Plumb};

const CONNS: usize = 100;
const SIZE: usize = 16 << 20;
const CHUNK: usize = 64 << 10;
/// The whole test, on a 2-core machine in a debug build (it takes about 12 s alone).
const LIMIT: Duration = Duration::from_secs(120);

/// A connection's random byte stream, `CHUNK` bytes at a time.
struct RandomStream {
    rng: fastrand::Rng,
    block: Vec<u8>,
    /// Bytes of `block` already used.
    pos: usize,
}

impl RandomStream {
    fn new(seed: u64) -> RandomStream {
        RandomStream {
            rng: fastrand::Rng::with_seed(seed),
            block: vec![0u8; CHUNK],
            pos: CHUNK,
        }
    }

    /// The next whole chunk.
    fn next_chunk(&mut self) -> &[u8] {
        self.rng.fill(&mut self.block);
        self.pos = CHUNK;
        &self.block
    }

    /// Compares `got` with the stream's next `got.len()` bytes; on a difference,
    /// returns its index in `got`.
    fn check(&mut self, mut got: &[u8]) -> Result<(), usize> {
        let mut done = 0;
        while !got.is_empty() {
            if self.pos == CHUNK {
                self.rng.fill(&mut self.block);
                self.pos = 0;
            }
            let n = got.len().min(CHUNK - self.pos);
            let want = &self.block[self.pos..self.pos + n];
            if &got[..n] != want {
                let i = got[..n]
                    .iter()
                    .zip(want)
                    .position(|(a, b)| a != b)
                    .unwrap_or(0);
                return Err(done + i);
            }
            self.pos += n;
            done += n;
            got = &got[n..];
        }
        Ok(())
    }
}

/// Sends `SIZE` bytes of the stream seeded with `seed` while concurrently reading the
/// echo and checking it against the same stream; half-closes once all is sent and
/// expects EOF exactly after `SIZE` bytes. Returns the bytes sent and received.
async fn transfer(addr: SocketAddr, seed: u64) -> Result<(usize, usize), String> {
    let s = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let (mut r, mut w) = s.into_split();
    let writer = tokio::spawn(async move {
        let mut stream = RandomStream::new(seed);
        let mut sent = 0;
        while sent < SIZE {
            let chunk = stream.next_chunk();
            w.write_all(chunk).await?;
            sent += chunk.len();
        }
        w.shutdown().await?;
        std::io::Result::Ok(sent)
    });
    let mut expected = RandomStream::new(seed);
    let mut buf = vec![0u8; CHUNK];
    let mut received = 0;
    loop {
        let n = r
            .read(&mut buf)
            .await
            .map_err(|e| format!("read after {received} bytes: {e}"))?;
        if n == 0 {
            break;
        }
        if received + n > SIZE {
            return Err(format!("{} bytes more than sent", received + n - SIZE));
        }
        if let Err(i) = expected.check(&buf[..n]) {
            return Err(format!("byte {} differs from what was sent", received + i));
        }
        received += n;
    }
    let sent = writer
        .await
        .map_err(|e| format!("writer task: {e}"))?
        .map_err(|e| format!("write: {e}"))?;
    Ok((sent, received))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_connections_sixteen_mib_both_ways() {
    let backend = echo().await;
    let plumb = Plumb::start(&config(&[backend.addr.to_string()], "", "")).await;
    let addr = plumb.addr();

    let t0 = Instant::now();
    let tasks: Vec<_> = (0..CONNS as u64)
        .map(|k| tokio::spawn(transfer(addr, 0x5eed_0000 + k)))
        .collect();
    let all = async {
        let mut out = Vec::new();
        for t in tasks {
            out.push(t.await.expect("transfer task panicked"));
        }
        out
    };
    let results = tokio::time::timeout(LIMIT, all)
        .await
        .unwrap_or_else(|_| panic!("not done within {LIMIT:?}"));
    let elapsed = t0.elapsed();
    eprintln!(
        "bytes: {CONNS} connections x {} MiB both ways in {elapsed:?}",
        SIZE >> 20
    );

    for (k, r) in results.into_iter().enumerate() {
        let (sent, received) = r.unwrap_or_else(|e| panic!("connection {k}: {e}"));
        assert_eq!(sent, SIZE, "connection {k}");
        assert_eq!(
            received, SIZE,
            "connection {k}: received {received} of {SIZE} bytes"
        );
    }

    let log = plumb.wait_log(CONNS).await;
    assert_eq!(log.len(), CONNS);
    for line in &log {
        assert_eq!(line["end"], "client_closed", "{line}");
        assert_eq!(line["bytes_from_client"], SIZE, "{line}");
        assert_eq!(line["bytes_to_client"], SIZE, "{line}");
    }
}

/// The checker itself: it accepts the stream however it is split, and points at the
/// first wrong byte.
#[test]
fn random_stream_check_finds_the_first_difference() {
    let mut sent = Vec::new();
    let mut s = RandomStream::new(9);
    for _ in 0..3 {
        sent.extend_from_slice(s.next_chunk());
    }
    let mut ok = RandomStream::new(9);
    for piece in sent.chunks(1000) {
        assert_eq!(ok.check(piece), Ok(()));
    }
    let mut bad = sent.clone();
    bad[CHUNK + 17] ^= 1;
    let mut c = RandomStream::new(9);
    assert_eq!(c.check(&bad[..CHUNK]), Ok(()));
    assert_eq!(c.check(&bad[CHUNK..]), Err(17));
    assert_eq!(
        RandomStream::new(10)
            .check(&sent[..CHUNK])
            .map_err(|i| i < 8),
        Err(true)
    );
}
