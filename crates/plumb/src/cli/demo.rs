//! `plumb demo`: three HTTP origins on loopback and plumb in front of them, built from
//! an ordinary config, so what the demo does is what `plumb serve` does.

use std::net::SocketAddr;
use std::process::ExitCode;

use anyhow::Context;
use plumb_core::{AccessLog, Server};
use plumb_lab::origin::Origin;
use tokio::net::TcpListener;

const NAMES: [&str; 3] = ["origin-a", "origin-b", "origin-c"];

pub fn run(
    listen: SocketAddr,
    tcp_listen: SocketAddr,
    admin: SocketAddr,
    balance: &str,
) -> anyhow::Result<ExitCode> {
    let rt = super::runtime()?;
    rt.block_on(async {
        let signals = super::Signals::install();
        let mut origins = Vec::new();
        for name in NAMES {
            let l = TcpListener::bind("127.0.0.1:0").await.context("cannot bind a demo origin on 127.0.0.1")?;
            origins.push(Origin::spawn(name, l)?);
        }
        let backends: Vec<String> = origins.iter().map(|o| format!("\"{}\"", o.addr())).collect();
        // A loopback port with nothing on it, behind /broken: connects are refused, so
        // the demo shows an error that plumb made and that names its cause.
        let refusing = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .context("cannot find a free loopback port")?;
        let toml = format!(
            "[runtime]\nshutdown_grace = \"2s\"\n\n[admin]\nlisten = \"{admin}\"\n\n[[listener]]\nname = \"http\"\nprotocol = \"http\"\nlisten = \"{listen}\"\npool = \"origins\"\n[[listener.route]]\npath_prefix = \"/broken\"\npool = \"broken\"\n\n[[listener]]\nname = \"tcp\"\nlisten = \"{tcp_listen}\"\npool = \"origins\"\n\n[[pool]]\nname = \"origins\"\nbalance = \"{balance}\"\nbackends = [{}]\n\n[[pool]]\nname = \"broken\"\nbackends = [\"{refusing}\"]\n",
            backends.join(", ")
        );
        let config = match plumb_config::parse(&toml) {
            Ok(c) => c,
            Err(e) => anyhow::bail!("invalid demo settings:\n{e}"),
        };
        let bound = plumb_core::bind_all(&config).with_context(|| {
            format!("is another program using {listen} or {tcp_listen}? try `plumb demo --listen 127.0.0.1:0 --tcp-listen 127.0.0.1:0`")
        })?;
        let admin_listener = TcpListener::bind(admin).await.with_context(|| {
            format!("cannot listen on {admin} for the admin API; try `plumb demo --admin 127.0.0.1:0`")
        })?;
        let admin_addr = admin_listener.local_addr()?;
        let proxy = bound[0].local_addrs()[0];
        let tcp = bound[1].local_addrs()[0];
        println!("plumb demo: three HTTP origins behind plumb, HTTP and TCP listeners ({balance})");
        println!();
        println!("  proxy     http://{proxy}/");
        println!("  tcp       http://{tcp}/");
        for o in &origins {
            println!("  {:<9} http://{}/", o.name(), o.addr());
        }
        println!("  admin     http://{admin_addr}/api/v1/pools");
        println!("  dashboard http://{admin_addr}/");
        println!("  metrics   http://{admin_addr}/metrics");
        println!();
        println!("Try:  for i in 1 2 3 4 5 6; do curl -s http://{proxy}/; done");
        println!("      curl -X POST http://{admin_addr}/api/v1/pools/origins/backends/{}/drain", origins[0].addr());
        println!("      curl -si http://{proxy}/broken   (nothing listens there: plumb's 502 names the cause)");
        println!("Each response names the origin that answered. The proxy listener is HTTP (one");
        println!("access-log line per request, on stderr); the tcp listener proxies bytes (one line");
        println!("per connection). Ctrl-C stops the demo.");
        let server = std::sync::Arc::new(Server::new(&config, AccessLog::stderr()));
        let admin = plumb_admin::Admin::new(std::sync::Arc::clone(&server), None, "demo".to_string(), None);
        super::serve::run_with_admin(
            server,
            bound,
            admin_listener,
            admin,
            signals,
            tokio_util::sync::CancellationToken::new(),
            || {},
        )
        .await?;
        drop(origins);
        anyhow::Ok(())
    })?;
    Ok(ExitCode::SUCCESS)
}
