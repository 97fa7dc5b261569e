//! `plumb serve`: load the config, bind every listener and the admin API (failing
//! before accepting anything if one cannot bind), and run until SIGTERM/SIGINT.

use std::collections::HashMap;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use plumb_config::Config;
use plumb_core::Server;
use tokio_util::sync::CancellationToken;

#[allow(
    clippy::option_option,
    reason = "--take-over: absent, bare, or with a path"
)]
pub fn run(path: &Path, take_over: Option<Option<std::path::PathBuf>>) -> anyhow::Result<ExitCode> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read config file {}", path.display()))?;
    let config = match plumb_config::parse(&text).and_then(plumb_core::discovery::supported) {
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
    // `--take-over` without a value: the config's upgrade socket.
    let take_over = match take_over {
        Some(None) => match &config.runtime.upgrade_socket {
            Some(sock) => Some(sock.clone()),
            None => anyhow::bail!(
                "--take-over needs a socket path, or runtime.upgrade_socket in the config"
            ),
        },
        Some(Some(p)) => Some(p),
        None => None,
    };
    let inherited = take_over
        .as_deref()
        .map(super::upgrade::take_over)
        .transpose()?;
    let checksum = plumb_admin::reload::checksum(&text);
    let token = read_token(&config)?;
    let access_log = Server::open_access_log(&config).context("cannot open the access log")?;
    let rt = super::runtime()?;
    rt.block_on(async {
        let signals = super::Signals::install();
        let mut sockets = HashMap::new();
        let mut handover = None;
        if let Some(mut i) = inherited {
            tracing::info!(
                from.pid = i.from_pid,
                sockets = i.sockets.values().map(Vec::len).sum::<usize>(),
                "took over listening sockets"
            );
            sockets = std::mem::take(&mut i.sockets);
            handover = Some(i);
        }
        let bound = plumb_core::bind_all_with(&config, &mut sockets)?;
        let listening: usize = bound.iter().map(|b| b.sockets.len()).sum();
        if config.runtime.upgrade_socket.is_some() && listening >= plumb_sys::MAX_PASSED_FDS {
            tracing::warn!(
                sockets = listening,
                most = plumb_sys::MAX_PASSED_FDS - 1,
                "binary upgrades cannot hand over this many listening sockets (one per address and worker): lower runtime.workers or the listening addresses"
            );
        }
        let admin_listener = match sockets.remove(&config.admin.listen).and_then(|v| v.into_iter().next()) {
            Some(s) => {
                s.set_nonblocking(true)?;
                tokio::net::TcpListener::from_std(s)?
            }
            None => tokio::net::TcpListener::bind(config.admin.listen)
                .await
                .with_context(|| {
                    format!(
                        "admin API: cannot listen on {} (admin.listen)",
                        config.admin.listen
                    )
                })?,
        };
        // Sockets the old process had that this config does not use close here
        // (the old process still holds them until it exits).
        drop(sockets);
        tracing::info!(addr = %config.admin.listen, token = token.is_some(), "admin API listening");
        for a in plumb_config::advise(&config) {
            tracing::warn!(field = %a.path, "{}", a.message);
        }
        let server = Arc::new(Server::new(&config, access_log));
        let handed_over = CancellationToken::new();
        // Once every listener accepts (TLS loaded, discovery answered): tell the
        // old process, if any, to stop; then serve upgrades ourselves. Before
        // that, a failure here leaves the old process serving and its socket path
        // untouched.
        let started = {
            let upgrade_socket = config.runtime.upgrade_socket.clone();
            let admin_dup = admin_listener_dup(&admin_listener)?;
            let server = Arc::clone(&server);
            let handed_over = handed_over.clone();
            // On a thread of its own: the handshake with the old process blocks
            // (bounded), and with one worker the runtime's only thread must go on
            // serving meanwhile.
            move || {
                std::thread::spawn(move || {
                let took_over = handover.is_some();
                if let Some(h) = handover {
                    let from = h.from_pid;
                    match h.ready() {
                        Ok(()) => tracing::info!(
                            from.pid = from,
                            "took over: the old plumb stops accepting and drains"
                        ),
                        // It has gone; the sockets are ours either way.
                        Err(e) => tracing::warn!(
                            from.pid = from,
                            error = %format!("{e:#}"),
                            "took over, but the old plumb did not acknowledge (gone?)"
                        ),
                    }
                }
                if let Some(sock) = upgrade_socket {
                    if let Err(e) = super::upgrade::serve_successors(
                        &sock,
                        took_over,
                        server,
                        admin_dup,
                        handed_over,
                    ) {
                        tracing::error!(error = %format!("{e:#}"), "binary upgrades unavailable");
                    }
                }
                });
            }
        };
        let admin = plumb_admin::Admin::new(
            Arc::clone(&server),
            token,
            checksum,
            Some(path.to_path_buf()),
        );
        run_with_admin(
            server,
            bound,
            admin_listener,
            admin,
            signals,
            handed_over,
            started,
        )
        .await
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
    handed_over: CancellationToken,
    started: impl FnOnce(),
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
    // A successor took the sockets: the admin API is its now; this process drains.
    let shutdown = {
        let admin_stop = admin_stop.clone();
        async move {
            tokio::select! {
                () = signals.shutdown(on_hup) => {}
                () = handed_over.cancelled() => admin_stop.cancel(),
            }
        }
    };
    let result = server.run_notifying(bound, shutdown, started).await;
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

/// A duplicate of the admin API's listening socket, to hand to a successor.
fn admin_listener_dup(l: &tokio::net::TcpListener) -> anyhow::Result<std::net::TcpListener> {
    use std::os::fd::AsFd;
    Ok(std::net::TcpListener::from(l.as_fd().try_clone_to_owned()?))
}
