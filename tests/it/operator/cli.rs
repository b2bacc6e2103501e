//! `firstcome campaign pause|resume|patch|actions` against a running
//! service: the binary itself, with `--actor`.

use std::process::Command;

use chrono::{Duration, SubsecRound, Utc};

use super::{actions, claim_raw};
use crate::common::{spawn_app, TOKEN};

/// Runs the binary with `args` against `base`; (success, stdout).
async fn firstcome(base: &str, args: Vec<String>) -> (bool, String) {
    let base = base.to_string();
    tokio::task::spawn_blocking(move || {
        let out = Command::new(env!("CARGO_BIN_EXE_firstcome"))
            .arg("campaign")
            .args(&args)
            .env("FIRSTCOME_URL", &base)
            .env("FIRSTCOME_ADMIN_TOKEN", TOKEN)
            .output()
            .expect("run firstcome");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn the_cli_pauses_resumes_and_patches() {
    let app = spawn_app().await;
    let id = app.campaign("db-lock", &[("main", 3)]).await;
    let args = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let ids = id.to_string();

    let (ok, out) = firstcome(&app.base, args(&["pause", "--actor", "dana", &ids])).await;
    assert!(ok, "{out}");
    let (s, _, v) = claim_raw(&app, id, "u1").await;
    assert_eq!((s, v["code"].as_str()), (409, Some("paused")));
    let (ok, out) = firstcome(&app.base, args(&["resume", "--actor", "dana", &ids])).await;
    assert!(ok, "{out}");
    let closes = (Utc::now() + Duration::hours(3))
        .trunc_subsecs(0)
        .to_rfc3339();
    let (ok, out) = firstcome(
        &app.base,
        args(&[
            "patch",
            "--actor",
            "dana",
            &ids,
            "--closes-at",
            &closes,
            "--pool",
            "main=5",
        ]),
    )
    .await;
    assert!(ok, "{out}");
    assert!(out.contains("\"stock\": 5"), "{out}");
    // A refusal is a failure of the command.
    let (ok, _) = firstcome(&app.base, args(&["patch", &ids, "--pool", "main=0"])).await;
    assert!(!ok);
    let (ok, out) = firstcome(&app.base, args(&["actions", &ids, "--limit", "2"])).await;
    assert!(ok && out.contains("\"patch\""), "{out}");
    let log = actions(&app, id).await;
    let who: Vec<(&str, &str)> = log
        .iter()
        .map(|(a, b, _, _)| (a.as_str(), b.as_str()))
        .collect();
    assert_eq!(
        who,
        [
            ("dana", "patch"),
            ("dana", "resume"),
            ("dana", "pause"),
            ("admin", "create")
        ]
    );
}
