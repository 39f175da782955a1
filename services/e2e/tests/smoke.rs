//! `loadgen --smoke`, what the chart's `helm test` pod runs, against the
//! five real binaries: it passes, step by step, on a working system, and on
//! a broken one it exits non-zero with a FAIL line naming the step.

mod common;

use std::process::Output;
use std::time::Duration;

use common::{Stack, Svc};

/// Runs `loadgen --smoke` against `stack` with each service's own URL, as
/// the test pod does; `extra` are more arguments.
async fn smoke(stack: &Stack, password: &str, extra: &[&str]) -> Output {
    let (email, _) = stack.admin_credentials();
    let mut command = tokio::process::Command::new(common::binary_dir().join("loadgen"));
    command
        .arg("--smoke")
        .args(extra)
        // Wrong on purpose: with every per-service URL set, the base URL
        // must not be used for anything.
        .args(["--base-url", "http://127.0.0.1:9"])
        .env("STOCKMESH_ADMIN_EMAIL", email)
        .env("STOCKMESH_ADMIN_PASSWORD", password)
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .kill_on_drop(true);
    for (var, svc) in [
        ("LOADGEN_USER_URL", Svc::User),
        ("LOADGEN_PRODUCT_URL", Svc::Product),
        ("LOADGEN_INVENTORY_URL", Svc::Inventory),
        ("LOADGEN_ORDER_URL", Svc::Order),
        ("LOADGEN_NOTIFICATION_URL", Svc::Notification),
    ] {
        command.env(var, stack.url(svc, ""));
    }
    tokio::time::timeout(Duration::from_secs(120), command.output())
        .await
        .expect("loadgen --smoke finished within 120 s")
        .expect("run loadgen --smoke")
}

fn stdout_lines(output: &Output) -> Vec<String> {
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

fn show(output: &Output) -> String {
    format!(
        "exit {}\n--- stdout\n{}--- stderr\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// Every step of a passing run, in order.
const STEPS: [&str; 13] = [
    "readyz user",
    "readyz product",
    "readyz inventory",
    "readyz order",
    "readyz notification",
    "admin login",
    "create product",
    "register shopper",
    "place order",
    "order confirmed",
    "notification listed",
    "stock decreased",
    "delete product",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smoke_mode_passes_against_the_running_system() {
    let stack = Stack::start().await;
    let (_, password) = stack.admin_credentials();
    let output = smoke(&stack, password, &[]).await;
    eprintln!("{}", show(&output));
    assert!(output.status.success(), "smoke failed:\n{}", show(&output));
    let lines = stdout_lines(&output);
    let mut want: Vec<&str> = STEPS.to_vec();
    want.push("delete shopper");
    let steps: Vec<&str> = lines
        .iter()
        .filter_map(|l| l.strip_prefix("ok   "))
        .map(|l| l.split_once(": ").map_or(l, |(step, _)| step))
        .collect();
    assert_eq!(steps, want, "{}", show(&output));
    assert!(
        !lines
            .iter()
            .any(|l| l.starts_with("FAIL") || l.starts_with("skip")),
        "{}",
        show(&output)
    );
    assert_eq!(
        lines.last().map(String::as_str),
        Some("smoke: all 14 steps passed")
    );
    // The details say what was checked.
    let detail = |step: &str| {
        lines
            .iter()
            .find(|l| l.starts_with(&format!("ok   {step}: ")))
            .cloned()
            .unwrap_or_default()
    };
    assert!(
        detail("readyz inventory").contains(&stack.url(Svc::Inventory, "/readyz")),
        "{}",
        show(&output)
    );
    assert!(detail("order confirmed").contains("CONFIRMED"));
    assert!(detail("notification listed").contains("confirmed"));
    assert!(detail("stock decreased").contains("10 - 2 = 8"));

    // It cleaned up: the smoke product is gone from the catalog.
    let product = detail("create product")
        .split_whitespace()
        .nth(4)
        .map(str::to_owned)
        .expect("the product id in the create product line");
    let answer = stack
        .call(
            reqwest::Method::GET,
            Svc::Product,
            &format!("/api/products/{product}"),
            None,
            None,
        )
        .await;
    assert_eq!(
        answer.status,
        reqwest::StatusCode::NOT_FOUND,
        "{}",
        answer.body
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smoke_mode_fails_naming_the_step() {
    let mut stack = Stack::start().await;
    let password = stack.admin_credentials().1.to_owned();

    // The notification service is down: its readiness fails, the order is
    // still confirmed (order does not need it), its notification never
    // shows, and the product is still cleaned up.
    stack.kill_hard(Svc::Notification);
    let output = smoke(&stack, &password, &["--smoke-timeout", "3"]).await;
    eprintln!("{}", show(&output));
    assert_eq!(output.status.code(), Some(1), "{}", show(&output));
    let lines = stdout_lines(&output);
    let has = |prefix: &str| lines.iter().any(|l| l.starts_with(prefix));
    let has_with = |step: &str, text: &str| {
        lines
            .iter()
            .any(|l| l.starts_with(&format!("FAIL {step}: ")) && l.contains(text))
    };
    assert!(
        has("FAIL readyz notification: GET ") && has_with("readyz notification", "cannot connect"),
        "{}",
        show(&output)
    );
    for step in [
        "readyz inventory",
        "admin login",
        "place order",
        "order confirmed",
    ] {
        assert!(has(&format!("ok   {step}: ")), "{step}: {}", show(&output));
    }
    // Polled until the deadline, then failed with what was seen last.
    assert!(
        has("FAIL notification listed: the order's notification not seen within ")
            && has_with("notification listed", "(last: GET "),
        "{}",
        show(&output)
    );
    assert!(has("ok   delete product: "), "{}", show(&output));
    assert!(!has("ok   stock decreased"), "{}", show(&output));
    assert_eq!(
        lines.last().map(String::as_str),
        Some("smoke: 2 of 13 steps failed"),
        "{}",
        show(&output)
    );

    // A wrong admin password: every service ready, the login step fails
    // with the answer's status and nothing after it runs.
    stack.restart(Svc::Notification).await;
    let output = smoke(&stack, "not-the-admin-password", &[]).await;
    eprintln!("{}", show(&output));
    assert_eq!(output.status.code(), Some(1), "{}", show(&output));
    let lines = stdout_lines(&output);
    let fails: Vec<&String> = lines.iter().filter(|l| l.starts_with("FAIL")).collect();
    assert_eq!(fails.len(), 1, "{}", show(&output));
    assert!(
        fails[0].starts_with("FAIL admin login: POST ")
            && fails[0].contains("answered 401 Unauthorized, want 200"),
        "{}",
        show(&output)
    );
    assert_eq!(
        lines
            .iter()
            .filter(|l| l.starts_with("ok   readyz "))
            .count(),
        5,
        "{}",
        show(&output)
    );
    assert!(
        !lines.iter().any(|l| l.starts_with("ok   create product")),
        "{}",
        show(&output)
    );
    assert_eq!(
        lines.last().map(String::as_str),
        Some("smoke: 1 of 6 steps failed")
    );
}
