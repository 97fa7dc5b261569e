//! Warnings about a valid config: settings plumb accepts but that are known to
//! hurt in a way the operator may not expect. `plumb check` prints them and
//! `plumb serve` logs them at start; they never make a config invalid.

use crate::model::{Config, TcpOptions};

/// One warning, with the field it is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Advice {
    /// The field, as in error messages (`pool[0].upstream.preconnect`).
    pub path: String,
    /// What can go wrong, and what to check.
    pub message: String,
}

/// Every warning for `config`, in file order.
pub fn advise(config: &Config) -> Vec<Advice> {
    let mut out = Vec::new();
    for (i, l) in config.listeners.iter().enumerate() {
        keepalive_outlived(&mut out, &format!("listener[{i}].tcp"), &l.tcp);
    }
    for (i, p) in config.pools.iter().enumerate() {
        if p.upstream.preconnect > 0 {
            out.push(Advice {
                path: format!("pool[{i}].upstream.preconnect"),
                message: format!(
                    "{} idle connection(s) held open to every backend of pool {:?}: a backend \
                     that serves one connection at a time blocks on one of them and stops \
                     answering everyone else until it is used or times out (incident 004); \
                     check each backend first with `plumb doctor URL --check idle-hold`",
                    p.upstream.preconnect, p.name
                ),
            });
        }
        keepalive_outlived(&mut out, &format!("pool[{i}].tcp"), &p.tcp);
    }
    out
}

/// `TCP_USER_TIMEOUT` shorter than the keepalive probing it also bounds.
fn keepalive_outlived(out: &mut Vec<Advice>, path: &str, tcp: &TcpOptions) {
    let (Some(ka), Some(ut)) = (tcp.keepalive, tcp.user_timeout) else {
        return;
    };
    let probing = ka.idle + ka.interval * ka.count;
    if ut < probing {
        out.push(Advice {
            path: format!("{path}.user_timeout"),
            message: format!(
                "{} is shorter than keepalive_idle + keepalive_interval x keepalive_count \
                 ({}): Linux ends an idle connection at the first unanswered probe after \
                 user_timeout, so keepalive_count no longer matters",
                crate::format_duration(ut),
                crate::format_duration(probing)
            ),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn advice(toml: &str) -> Vec<String> {
        let config = crate::parse(toml).expect("a valid config");
        advise(&config)
            .into_iter()
            .map(|a| format!("{}: {}", a.path, a.message))
            .collect()
    }

    const BASE: &str = "[[listener]]\nname = \"l\"\nlisten = \"127.0.0.1:1\"\npool = \"p\"\n[[pool]]\nname = \"p\"\nbackends = [\"127.0.0.1:2\"]\n";

    #[test]
    fn defaults_draw_no_warning() {
        assert_eq!(advice(BASE), Vec::<String>::new());
    }

    #[test]
    fn preconnect_is_warned_about_with_incident_004() {
        let a = advice(&format!("{BASE}upstream = {{ preconnect = 1 }}\n"));
        assert_eq!(a.len(), 1, "{a:?}");
        assert!(
            a[0].starts_with("pool[0].upstream.preconnect: 1 idle connection(s) held open to every backend of pool \"p\"")
                && a[0].contains("incident 004")
                && a[0].contains("--check idle-hold"),
            "{a:?}"
        );
    }

    #[test]
    fn user_timeout_below_keepalive_probing_is_warned_about() {
        let a = advice(&format!(
            "{BASE}tcp = {{ keepalive_idle = \"1s\", keepalive_interval = \"1s\", keepalive_count = 2, user_timeout = \"2s\" }}\n"
        ));
        assert_eq!(a.len(), 1, "{a:?}");
        assert!(
            a[0].starts_with("pool[0].tcp.user_timeout: 2s is shorter than"),
            "{a:?}"
        );
        let ok = advice(&format!(
            "{BASE}tcp = {{ keepalive_idle = \"1s\", keepalive_interval = \"1s\", keepalive_count = 2, user_timeout = \"3s\" }}\n"
        ));
        assert!(ok.is_empty(), "{ok:?}");
    }
}
