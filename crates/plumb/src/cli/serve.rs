//! `plumb serve`: load the config, bind every listener (failing before accepting
//! anything if one cannot bind), and run until SIGTERM/SIGINT.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use plumb_core::Server;

pub fn run(path: &Path) -> anyhow::Result<ExitCode> {
    let config = match plumb_config::load(path) {
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
    let access_log = Server::open_access_log(&config).context("cannot open the access log")?;
    let rt = super::runtime(config.runtime.workers)?;
    rt.block_on(async {
        let bound = plumb_core::bind_all(&config)?;
        let server = Server::new(&config, access_log);
        server.run(bound, super::shutdown_signal()).await?;
        anyhow::Ok(())
    })?;
    Ok(ExitCode::SUCCESS)
}
