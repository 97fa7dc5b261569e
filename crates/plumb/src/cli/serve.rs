//! `plumb serve`: load the config, bind every listener and the admin API (failing
//! before accepting anything if one cannot bind), and run until SIGTERM/SIGINT.

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use plumb_config::Config;
use plumb_core::Server;
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
    let checksum = plumb_admin::reload::checksum(&text);
    let token = read_token(&config)?;
    let access_log = Server::open_access_log(&config).context("cannot open the access log")?;
    let rt = super::runtime(config.runtime.workers)?;
    rt.block_on(async {
        let signals = super::Signals::install();
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
        for a in plumb_config::advise(&config) {
            tracing::warn!(field = %a.path, "{}", a.message);
        }
        let server = Arc::new(Server::new(&config, access_log));
        let admin = plumb_admin::Admin::new(
            Arc::clone(&server),
            token,
            checksum,
            Some(path.to_path_buf()),
        );
        run_with_admin(server, bound, admin_listener, admin, signals).await
    })?;
    Ok(ExitCode::SUCCESS)
}

/// Runs the data plane and the admin API until SIGTERM/SIGINT (SIGHUP reloads the
/// config file, as `POST /api/v1/reload` does); the admin API stays up through the
/// shutdown grace period and stops last.
pub(super) async fn run_with_admin(
    server: Arc<Server>,
    bound: Vec<plumb_core::BoundListener>,
    admin_listener: tokio::net::TcpListener,
    admin: plumb_admin::Admin,
    signals: super::Signals,
) -> anyhow::Result<()> {
    let admin = Arc::new(admin);
    let admin_stop = CancellationToken::new();
    let admin_task = {
        let stop = admin_stop.clone();
        let admin = Arc::clone(&admin);
        tokio::spawn(async move {
            plumb_admin::serve(admin, admin_listener, stop.cancelled_owned()).await
        })
    };
    let on_hup = {
        let admin = Arc::clone(&admin);
        move || match admin.reload() {
            Ok(summary) => tracing::info!(
                changes = summary.changes.len(),
                needs_restart = summary.needs_restart.len(),
                "reloaded"
            ),
            Err(plumb_admin::reload::Failed::Invalid(errors)) => {
                for e in &errors.0 {
                    tracing::error!(error = %e, "reload refused: invalid config");
                }
            }
            Err(e) => tracing::error!(error = %e, "reload failed; nothing was changed"),
        }
    };
    let result = server.run(bound, signals.shutdown(on_hup)).await;
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
