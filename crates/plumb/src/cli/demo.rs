//! `plumb demo`: three HTTP origins on loopback and plumb in front of them, built from
//! an ordinary config, so what the demo does is what `plumb serve` does.

use std::net::SocketAddr;
use std::process::ExitCode;

use anyhow::Context;
use plumb_core::{AccessLog, Server};
use plumb_lab::origin::Origin;
use tokio::net::TcpListener;

const NAMES: [&str; 3] = ["origin-a", "origin-b", "origin-c"];

pub fn run(listen: SocketAddr, balance: &str) -> anyhow::Result<ExitCode> {
    let rt = super::runtime(None)?;
    rt.block_on(async {
        let mut origins = Vec::new();
        for name in NAMES {
            let l = TcpListener::bind("127.0.0.1:0").await.context("cannot bind a demo origin on 127.0.0.1")?;
            origins.push(Origin::spawn(name, l)?);
        }
        let backends: Vec<String> = origins.iter().map(|o| format!("\"{}\"", o.addr())).collect();
        let toml = format!(
            "[runtime]\nshutdown_grace = \"2s\"\n\n[[listener]]\nname = \"demo\"\nlisten = \"{listen}\"\npool = \"origins\"\n\n[[pool]]\nname = \"origins\"\nbalance = \"{balance}\"\nbackends = [{}]\n",
            backends.join(", ")
        );
        let config = match plumb_config::parse(&toml) {
            Ok(c) => c,
            Err(e) => anyhow::bail!("invalid demo settings:\n{e}"),
        };
        let bound = plumb_core::bind_all(&config).with_context(|| {
            format!("is another program using {listen}? try `plumb demo --listen 127.0.0.1:0`")
        })?;
        let proxy = bound[0].local_addrs()[0];
        println!("plumb demo: three HTTP origins behind one plumb TCP listener ({balance})");
        println!();
        println!("  proxy     http://{proxy}/");
        for o in &origins {
            println!("  {:<9} http://{}/", o.name(), o.addr());
        }
        println!();
        println!("Try:  for i in 1 2 3 4 5 6; do curl -s http://{proxy}/; done");
        println!("Each request names the origin that answered. The access log (one JSON line");
        println!("per connection) goes to stderr. The dashboard and metrics arrive with the");
        println!("admin API; this version has none yet. Ctrl-C stops the demo.");
        let server = Server::new(&config, AccessLog::stderr());
        server.run(bound, super::shutdown_signal()).await?;
        drop(origins);
        anyhow::Ok(())
    })?;
    Ok(ExitCode::SUCCESS)
}
