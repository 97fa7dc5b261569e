//! `plumb check`: load and validate a config through the same path as `serve`, and
//! print every error with its field path, and every warning (`plumb_config::advise`).

use std::path::Path;
use std::process::ExitCode;

use super::Format;

pub fn run(path: &Path, format: Format) -> ExitCode {
    // What this build cannot serve (etcd discovery without the feature) is an
    // error here too, as it is for `serve`.
    let loaded = plumb_config::load(path).and_then(plumb_core::discovery::supported);
    match loaded {
        Ok(config) => {
            // Warnings leave the config valid (exit 0): settings known to hurt.
            let advice = plumb_config::advise(&config);
            match format {
                Format::Text => {
                    println!(
                        "{}: ok ({} listener(s), {} pool(s), {} backend(s))",
                        path.display(),
                        config.listeners.len(),
                        config.pools.len(),
                        config.pools.iter().map(|p| p.backends.len()).sum::<usize>()
                    );
                    for a in &advice {
                        println!("warning: {}: {}", a.path, a.message);
                    }
                }
                Format::Json => println!(
                    "{}",
                    serde_json::json!({
                        "file": path.display().to_string(),
                        "ok": true,
                        "warnings": advice
                            .iter()
                            .map(|a| serde_json::json!({ "path": a.path, "message": a.message }))
                            .collect::<Vec<_>>(),
                    })
                ),
            }
            ExitCode::SUCCESS
        }
        Err(errors) => {
            for e in &errors.0 {
                match format {
                    Format::Text => println!("{e}"),
                    Format::Json => println!(
                        "{}",
                        serde_json::json!({ "file": path.display().to_string(), "path": e.path, "error": e.message })
                    ),
                }
            }
            if format == Format::Text {
                eprintln!("{}: {} error(s)", path.display(), errors.0.len());
            }
            ExitCode::from(1)
        }
    }
}
