//! `plumb serve`: load the config, bind every listener and the admin API (failing
//! before accepting anything if one cannot bind), and run until SIGTERM/SIGINT.

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use plumb_config::Config;
use plumb_core::Server;
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

pub fn run(path: &Path) -> anyhow::Result<ExitCode> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read config file {}", path.display()))?;
    let config = match plumb_config::parse(&text) {
        Ok(c) => c,
        Err(errors) => {
            for e in &errors.0 {
                eprintln!("{e}");
            }
            eprintln!(
                "{}: {} error(s); not starting",
                path.display(),
                errors.0.len()
            );
            return Ok(ExitCode::from(1));
        }
    };
    let checksum = format!("sha256:{:x}", Sha256::digest(text.as_bytes()));
    let token = read_token(&config)?;
    let access_log = Server::open_access_log(&config).context("cannot open the access log")?;
    let rt = super::runtime(config.runtime.workers)?;
    rt.block_on(async {
        let signals = super::shutdown_signal();
        let bound = plumb_core::bind_all(&config)?;
        let admin_listener = tokio::net::TcpListener::bind(config.admin.listen)
            .await
            .with_context(|| {
                format!(
                    "admin API: cannot listen on {} (admin.listen)",
                    config.admin.listen
                )
            })?;
        tracing::info!(addr = %config.admin.listen, token = token.is_some(), "admin API listening");
        let server = Arc::new(Server::new(&config, access_log));
        run_with_admin(server, bound, admin_listener, token, checksum, signals).await
    })?;
    Ok(ExitCode::SUCCESS)
}

/// Runs the data plane and the admin API until a signal; the admin API stays up
/// through the shutdown grace period and stops last.
pub(super) async fn run_with_admin(
    server: Arc<Server>,
    bound: Vec<plumb_core::BoundListener>,
    admin_listener: tokio::net::TcpListener,
    token: Option<String>,
    config_checksum: String,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let admin = Arc::new(plumb_admin::Admin {
        server: Arc::clone(&server),
        token,
        config_checksum,
    });
    let admin_stop = CancellationToken::new();
    let admin_task = {
        let stop = admin_stop.clone();
        tokio::spawn(async move {
            plumb_admin::serve(admin, admin_listener, stop.cancelled_owned()).await
        })
    };
    let result = server.run(bound, shutdown).await;
    admin_stop.cancel();
    let _ = admin_task.await;
    Ok(result?)
}

fn read_token(config: &Config) -> anyhow::Result<Option<String>> {
    let Some(path) = &config.admin.token_file else {
        return Ok(None);
    };
    let raw = std::fs::read_to_string(path)
        .with_context(|| format!("admin.token_file: cannot read {}", path.display()))?;
    let token = raw.trim();
    if token.is_empty() {
        anyhow::bail!("admin.token_file: {} is empty", path.display());
    }
    Ok(Some(token.to_string()))
}
