//! `loadgen --smoke`: one pass through the whole system, as `helm test` runs
//! it from inside the cluster: every service's `/readyz` (inventory's
//! included), the admin's login, a product with stock, a fresh shopper, one
//! order, and then, within `--smoke-timeout`, the order `CONFIRMED`, its
//! notification listed to the shopper and the product's stock down by the
//! quantity (product reads it from inventory). The product and the shopper
//! are deleted at the end, so repeated runs leave no catalog entries behind
//! (the order and its notification stay, as history).
//!
//! Each step prints one line, `ok   <step>: <detail>` or
//! `FAIL <step>: <reason>`, then a summary; the exit code is 0 only if every
//! step passed. The readiness checks all run even when one fails, then the
//! journey runs until its first failure (a later step needs the earlier
//! ones).

use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::api::{Api, SHOPPER_PASSWORD};
use crate::config::Options;

/// Units the smoke product starts with, and how many the order takes.
const STOCK: i64 = 10;
const QUANTITY: i64 = 2;
/// The most one request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause between two polls of a condition.
const POLL: Duration = Duration::from_millis(200);

/// Counts and prints the steps.
#[derive(Default)]
struct Report {
    passed: u32,
    failed: u32,
}

impl Report {
    fn ok(&mut self, step: &str, detail: &str) {
        self.passed += 1;
        println!("ok   {step}: {detail}");
    }

    fn fail(&mut self, step: &str, reason: &str) {
        self.failed += 1;
        println!("FAIL {step}: {reason}");
    }

    /// Prints the step's line; `Some` of the value when it passed.
    fn step<T>(&mut self, step: &str, result: Result<(T, String), String>) -> Option<T> {
        match result {
            Ok((value, detail)) => {
                self.ok(step, &detail);
                Some(value)
            }
            Err(reason) => {
                self.fail(step, &reason);
                None
            }
        }
    }
}

/// An answer: status and JSON body (`Null` when the body is not JSON).
struct Answer {
    status: StatusCode,
    body: Value,
}

impl Answer {
    /// `Err` with a readable reason unless the status is `want`.
    fn expect(self, want: StatusCode, what: &str) -> Result<Value, String> {
        if self.status == want {
            Ok(self.body)
        } else {
            Err(format!(
                "{what} answered {}, want {}{}",
                self.status,
                want.as_u16(),
                describe_body(&self.body)
            ))
        }
    }
}

/// The error part of an answer's body, shortened, for a reason.
fn describe_body(body: &Value) -> String {
    let text = match &body["error"] {
        Value::Null if body.is_null() => return String::new(),
        Value::Null => body.to_string(),
        error => error.to_string(),
    };
    let short: String = text.chars().take(300).collect();
    format!(" ({short})")
}

/// A transport error, readably: what failed and its innermost cause
/// ("Connection refused" is in a source, not in the error's own text).
fn describe_error(err: &reqwest::Error) -> String {
    if err.is_timeout() {
        return format!("no answer within {REQUEST_TIMEOUT:?}");
    }
    let mut innermost = None;
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        innermost = Some(cause.to_string());
        source = cause.source();
    }
    let what = if err.is_connect() {
        "cannot connect".to_owned()
    } else {
        err.to_string()
    };
    match innermost {
        Some(cause) => format!("{what}: {cause}"),
        None => what,
    }
}

async fn call(
    api: &Api,
    method: Method,
    url: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> Result<Answer, String> {
    let mut request = api.http.request(method.clone(), url);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    if let Some(body) = body {
        request = request.json(&body);
    }
    send(request, &format!("{method} {url}")).await
}

/// Sends `request` (`what` names it in reasons) within [`REQUEST_TIMEOUT`].
async fn send(request: reqwest::RequestBuilder, what: &str) -> Result<Answer, String> {
    let response = request
        .timeout(REQUEST_TIMEOUT)
        .send()
        .await
        .map_err(|e| format!("{what}: {}", describe_error(&e)))?;
    let status = response.status();
    let bytes = response
        .bytes()
        .await
        .map_err(|e| format!("{what}: reading the answer: {}", describe_error(&e)))?;
    Ok(Answer {
        status,
        body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    })
}

/// `GET url` that must answer 200: its body.
async fn get(api: &Api, url: &str, token: Option<&str>) -> Result<Value, String> {
    call(api, Method::GET, url, token, None)
        .await?
        .expect(StatusCode::OK, &format!("GET {url}"))
}

/// A string field of a JSON answer, or a reason naming it.
fn text_field(body: &Value, field: &str, what: &str) -> Result<String, String> {
    body[field]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| format!("{what}: the answer has no {field}: {body}"))
}

/// Polls `check` every [`POLL`] until it answers `Ok(Ok(..))` (done) or
/// `Err(..)` (a final failure, such as a REJECTED order), or `deadline`
/// passes; `Ok(Err(..))` means "not yet" and says what was seen (an
/// unreachable service or an error status is "not yet" too: a pod may be
/// restarting).
async fn wait_for<T, F, Fut>(deadline: Instant, what: &str, mut check: F) -> Result<T, String>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Result<T, String>, String>>,
{
    let started = Instant::now();
    loop {
        let last = match check().await {
            Ok(Ok(value)) => return Ok(value),
            Ok(Err(not_yet)) => not_yet,
            Err(fatal) => return Err(fatal),
        };
        if Instant::now() >= deadline {
            return Err(format!(
                "{what} not seen within {:.0?} (last: {last})",
                started.elapsed()
            ));
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Runs the smoke test; `true` when every step passed.
pub async fn run(options: &Options) -> bool {
    let mut report = Report::default();
    match Api::new(&options.base_url) {
        Ok(api) => journey(&api, options, &mut report).await,
        Err(err) => report.fail("start", &format!("cannot build the HTTP client: {err:#}")),
    }
    let total = report.passed + report.failed;
    if report.failed == 0 {
        println!("smoke: all {total} steps passed");
    } else {
        println!("smoke: {} of {total} steps failed", report.failed);
    }
    report.failed == 0
}

async fn journey(api: &Api, options: &Options, report: &mut Report) {
    // 1. Readiness of every service that has its own URL (behind one base
    // URL, an Ingress or the local gateway routes only /api/...).
    for (svc, url) in [
        ("user", &api.users),
        ("product", &api.products),
        ("inventory", &api.inventory),
        ("order", &api.orders),
        ("notification", &api.notifications),
    ] {
        let step = format!("readyz {svc}");
        if !api.own_url.contains(&svc) {
            println!(
                "skip {step}: no LOADGEN_{}_URL (the base URL routes only /api/...)",
                svc.to_ascii_uppercase()
            );
            continue;
        }
        let url = format!("{url}/readyz");
        let result = call(api, Method::GET, &url, None, None)
            .await
            .and_then(|a| a.expect(StatusCode::OK, &format!("GET {url}")))
            .map(|_| ((), format!("GET {url} answered 200")));
        report.step(&step, result);
    }

    let run = uuid::Uuid::new_v4().simple().to_string();
    let run = &run[..12];

    // 2. The admin logs in.
    let admin = &options.admin_email;
    let result = login(api, admin, &options.admin_password)
        .await
        .map(|token| (token, format!("logged in as {admin}")));
    let Some(admin_token) = report.step("admin login", result) else {
        return;
    };

    // 3. A product with stock (product records it in inventory).
    let result = create_product(api, &admin_token, run).await;
    let Some(product) = report.step("create product", result) else {
        return;
    };

    // 4. The rest needs the product; it is deleted whatever happens.
    let shopper = shopper_journey(api, options, report, &product, run).await;
    let url = format!("{}/api/products/{product}", api.products);
    let result = call(api, Method::DELETE, &url, Some(&admin_token), None)
        .await
        .and_then(|a| a.expect(StatusCode::NO_CONTENT, &format!("DELETE {url}")))
        .map(|_| ((), format!("product {product} deleted")));
    report.step("delete product", result);
    if let Some(user) = shopper {
        let url = format!("{}/api/users/{user}", api.users);
        let result = call(api, Method::DELETE, &url, Some(&admin_token), None)
            .await
            .and_then(|a| a.expect(StatusCode::NO_CONTENT, &format!("DELETE {url}")))
            .map(|_| ((), format!("shopper {user} deleted")));
        report.step("delete shopper", result);
    }
}

/// Registers a shopper and walks one order through; returns the shopper's
/// id once registered (for the clean-up).
async fn shopper_journey(
    api: &Api,
    options: &Options,
    report: &mut Report,
    product: &str,
    run: &str,
) -> Option<String> {
    let email = format!("smoke-{run}@example.com");
    let result = register(api, &email).await;
    let (user, token) = report.step("register shopper", result)?;

    let result = place_order(api, &token, product, run).await;
    let Some(order) = report.step("place order", result) else {
        return Some(user);
    };

    // One deadline for everything that happens after the 201.
    let deadline = Instant::now() + options.smoke_timeout;
    let url = format!("{}/api/orders/{order}", api.orders);
    let result = wait_for(deadline, "status CONFIRMED", || async {
        let body = match get(api, &url, Some(&token)).await {
            Ok(body) => body,
            Err(not_yet) => return Ok(Err(not_yet)),
        };
        Ok(match body["status"].as_str() {
            Some("CONFIRMED") => Ok(()),
            Some(final_status @ ("REJECTED" | "FAILED" | "CANCELLED")) => {
                return Err(format!(
                    "the order is {final_status}{}",
                    body["failure_reason"]
                        .as_str()
                        .map(|r| format!(": {r}"))
                        .unwrap_or_default()
                ));
            }
            other => Err(format!("status {other:?}")),
        })
    })
    .await
    .map(|()| ((), format!("order {order} is CONFIRMED")));
    if report.step("order confirmed", result).is_none() {
        return Some(user);
    }

    let url = format!("{}/api/notifications?limit=50", api.notifications);
    let result = wait_for(deadline, "the order's notification", || async {
        let body = match get(api, &url, Some(&token)).await {
            Ok(body) => body,
            Err(not_yet) => return Ok(Err(not_yet)),
        };
        let Some(items) = body["items"].as_array() else {
            return Ok(Err(format!("GET {url}: no items in {body}")));
        };
        Ok(items
            .iter()
            .find(|n| n["order_id"].as_str() == Some(order.as_str()))
            .map(|n| n["message"].as_str().unwrap_or("(no message)").to_owned())
            .ok_or_else(|| format!("{} notifications, none for the order", items.len())))
    })
    .await
    .map(|message| ((), format!("{message:?}")));
    if report.step("notification listed", result).is_none() {
        return Some(user);
    }

    let want = STOCK - QUANTITY;
    let url = format!("{}/api/products/{product}", api.products);
    let result = wait_for(deadline, &format!("stock {want}"), || async {
        let body = match get(api, &url, None).await {
            Ok(body) => body,
            Err(not_yet) => return Ok(Err(not_yet)),
        };
        Ok(match body["stock"].as_i64() {
            Some(stock) if stock == want => Ok(()),
            Some(stock) => Err(format!("stock {stock}")),
            None => Err(format!(
                "stock unknown{}",
                body["stock_reason"]
                    .as_str()
                    .map(|r| format!(" ({r})"))
                    .unwrap_or_default()
            )),
        })
    })
    .await
    .map(|()| ((), format!("{STOCK} - {QUANTITY} = {want} in stock")));
    report.step("stock decreased", result);
    Some(user)
}

/// Logs in; the access token.
async fn login(api: &Api, email: &str, password: &str) -> Result<String, String> {
    let url = format!("{}/api/users/login", api.users);
    let body = call(
        api,
        Method::POST,
        &url,
        None,
        Some(json!({"email": email, "password": password})),
    )
    .await?
    .expect(StatusCode::OK, &format!("POST {url} as {email}"))?;
    text_field(&body, "token", "login")
}

/// Creates the smoke product with [`STOCK`] units; its id.
async fn create_product(api: &Api, admin: &str, run: &str) -> Result<(String, String), String> {
    let url = format!("{}/api/products", api.products);
    let body = call(
        api,
        Method::POST,
        &url,
        Some(admin),
        Some(json!({
            "name": format!("smoke test {run}"),
            "description": "created and deleted by loadgen --smoke (helm test)",
            "price": {"amount_minor": 100, "currency": "EUR"},
            "initial_stock": STOCK,
        })),
    )
    .await?
    .expect(StatusCode::CREATED, &format!("POST {url}"))?;
    let id = text_field(&body, "id", "create product")?;
    match body["stock"].as_i64() {
        Some(STOCK) => Ok((id.clone(), format!("product {id} with {STOCK} in stock"))),
        Some(other) => Err(format!(
            "product {id} created with stock {other}, want {STOCK}"
        )),
        None => Err(format!(
            "product {id} created but inventory did not record its stock: {body}"
        )),
    }
}

/// Registers a fresh shopper and logs in: `(user id, token)`.
async fn register(api: &Api, email: &str) -> Result<((String, String), String), String> {
    let url = format!("{}/api/users/register", api.users);
    let body = call(
        api,
        Method::POST,
        &url,
        None,
        Some(json!({"email": email, "password": SHOPPER_PASSWORD, "name": "Smoke Test"})),
    )
    .await?
    .expect(StatusCode::CREATED, &format!("POST {url}"))?;
    let id = text_field(&body, "id", "register")?;
    let token = login(api, email, SHOPPER_PASSWORD).await?;
    Ok(((id.clone(), token), format!("{email} ({id}) logged in")))
}

/// Orders [`QUANTITY`] units; the order's id.
async fn place_order(
    api: &Api,
    token: &str,
    product: &str,
    run: &str,
) -> Result<(String, String), String> {
    let url = format!("{}/api/orders", api.orders);
    let request = api
        .http
        .post(&url)
        .bearer_auth(token)
        .header("Idempotency-Key", format!("smoke-{run}"))
        .json(&json!({"product_id": product, "quantity": QUANTITY}));
    let body = send(request, &format!("POST {url}"))
        .await?
        .expect(StatusCode::CREATED, &format!("POST {url}"))?;
    let id = text_field(&body, "id", "place order")?;
    let status = body["status"].as_str().unwrap_or("?");
    Ok((
        id.clone(),
        format!("order {id} for {QUANTITY} units answered 201 ({status})"),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_are_readable() {
        let answer = Answer {
            status: StatusCode::UNAUTHORIZED,
            body: json!({"error": {"code": "invalid_credentials", "message": "wrong"}}),
        };
        let reason = answer.expect(StatusCode::OK, "POST /login").unwrap_err();
        assert!(reason.starts_with("POST /login answered 401 Unauthorized, want 200"));
        assert!(reason.contains("invalid_credentials"), "{reason}");
        let answer = Answer {
            status: StatusCode::BAD_GATEWAY,
            body: Value::Null,
        };
        assert_eq!(
            answer.expect(StatusCode::OK, "GET /readyz").unwrap_err(),
            "GET /readyz answered 502 Bad Gateway, want 200"
        );
        let long = json!({"error": "x".repeat(1000)});
        assert!(describe_body(&long).len() < 320);
    }

    #[tokio::test]
    async fn a_step_that_never_succeeds_fails_at_the_deadline() {
        let deadline = Instant::now() + Duration::from_millis(300);
        let result: Result<(), String> = wait_for(deadline, "status CONFIRMED", || async {
            Ok(Err("status \"PENDING\"".to_owned()))
        })
        .await;
        let reason = result.unwrap_err();
        assert!(
            reason.starts_with("status CONFIRMED not seen within"),
            "{reason}"
        );
        assert!(reason.ends_with("(last: status \"PENDING\")"), "{reason}");
        let result: Result<(), String> = wait_for(deadline, "x", || async {
            Err("the order is REJECTED".into())
        })
        .await;
        assert_eq!(result.unwrap_err(), "the order is REJECTED");
    }

    #[tokio::test]
    async fn an_unreachable_service_fails_its_step_with_the_cause() {
        // A port nobody listens on: bound, then released.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .unwrap();
        let api = Api::new(&format!("http://127.0.0.1:{port}")).unwrap();
        let url = format!("http://127.0.0.1:{port}/readyz");
        let reason = call(&api, Method::GET, &url, None, None)
            .await
            .err()
            .unwrap();
        assert!(
            reason.starts_with(&format!("GET {url}: cannot connect: ")),
            "{reason}"
        );
        assert!(reason.to_lowercase().contains("refused"), "{reason}");
    }
}
