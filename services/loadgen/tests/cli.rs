//! The `loadgen` binary's command line as users and scripts meet it: the
//! generated `--help` names every flag the scripts, the chart and the e2e
//! tests pass, and a mistake is refused with a readable message and exit
//! code 2 before anything is sent.

use std::process::{Command, Output};

fn loadgen(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_loadgen"))
        .args(args)
        // Nothing from the caller's environment may change the answers.
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .env("STOCKMESH_ADMIN_PASSWORD", "do-not-print-me")
        .output()
        .expect("run loadgen")
}

/// Every flag the earlier hand-written parser accepted (and `scripts/`,
/// the chart and `services/e2e` use).
const FLAGS: [&str; 18] = [
    "--base-url",
    "--admin-email",
    "--admin-password",
    "--users",
    "--products",
    "--stock",
    "--mode",
    "--mix",
    "--concurrency",
    "--rate",
    "--duration",
    "--requests",
    "--lag-every",
    "--smoke",
    "--smoke-timeout",
    "--json",
    "--quiet",
    "--help",
];

#[test]
fn help_lists_every_flag_and_its_environment_variable() {
    for help in ["--help", "-h"] {
        let out = loadgen(&[help]);
        let text = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(0), "{help}: {text}");
        for flag in FLAGS {
            assert!(text.contains(flag), "{help} does not list {flag}:\n{text}");
        }
    }
    let text = String::from_utf8_lossy(&loadgen(&["--help"]).stdout).into_owned();
    for var in [
        "LOADGEN_BASE_URL",
        "STOCKMESH_ADMIN_EMAIL",
        "STOCKMESH_ADMIN_PASSWORD",
        "LOADGEN_CONCURRENCY",
        "LOADGEN_{USER,PRODUCT,INVENTORY,ORDER,NOTIFICATION}_URL",
    ] {
        assert!(text.contains(var), "--help does not mention {var}:\n{text}");
    }
    for mode in ["mixed", "orders", "logins", "live", "idle-streams"] {
        assert!(text.contains(mode), "--help does not list mode {mode}");
    }
    // The live-notification measurement `make bench` runs.
    for flag in [
        "--notification-url",
        "--streams",
        "--hold",
        "--live-timeout",
    ] {
        assert!(text.contains(flag), "--help does not list {flag}:\n{text}");
    }
    assert!(
        !text.contains("do-not-print-me"),
        "--help printed the admin password from the environment:\n{text}"
    );
}

#[test]
fn a_bad_flag_is_refused_with_a_readable_error_and_exit_code_2() {
    for (args, expect) in [
        (&["--frobnicate"][..], "--frobnicate"),
        (&["--concurrency", "0"], "--concurrency"),
        (&["--mode", "browse"], "browse"),
        (&["--duration=120s"], "120s"),
        (&["--rps=20"], "--rps"),
        (&["--users"], "--users"),
        (&["--mix", "0:0"], "--mix"),
    ] {
        let out = loadgen(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(
            stderr.contains("error:") && stderr.contains(expect),
            "{args:?}: the message should name {expect:?}:\n{stderr}"
        );
        assert!(
            out.stdout.is_empty(),
            "{args:?}: nothing on stdout (the report's place)"
        );
    }
}

#[test]
fn version_is_answered() {
    let out = loadgen(&["--version"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("loadgen "));
}
