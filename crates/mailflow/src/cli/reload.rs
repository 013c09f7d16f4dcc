//! `mailflow reload`: checks the organisation file here, then asks each server (or the
//! one named with `--server`) through its admin API to read it again. Exchange servers
//! pick up directory changes by themselves; mailflow servers do it on this command or
//! on `SIGHUP`. Each server keeps its old configuration if the file does not validate.

use std::process::ExitCode;

use super::{Global, load_directory};

pub fn run(g: &Global) -> anyhow::Result<ExitCode> {
    // The file is checked before any server is asked, so errors name file, line and key
    // here rather than in each server's log.
    let dir = load_directory(g)?;
    let servers: Vec<_> = match &g.server {
        Some(name) => vec![dir.choose_server(Some(name))?],
        None => dir.servers().collect(),
    };
    let mut failures = 0;
    for s in servers {
        let admin = crate::admin::client::AdminClient::new(&dir, s)?;
        let reply = admin
            .post("/api/reload")
            .and_then(|mut r| Ok(r.body_mut().read_json::<serde_json::Value>()?));
        match reply {
            Ok(v) => {
                println!("{}: reloaded {}", s.name, dir.source);
                let restart = v["RestartNeeded"].as_array().cloned().unwrap_or_default();
                for item in restart {
                    println!(
                        "{}: changed, applied at the next start: {}",
                        s.name,
                        item.as_str().unwrap_or_default()
                    );
                }
            }
            Err(e) => {
                failures += 1;
                println!("{}: {e}", s.name);
            }
        }
    }
    Ok(if failures == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(2)
    })
}
