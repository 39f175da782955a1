//! The web console in a real headless browser (Debian's chromium driven
//! over WebDriver by its chromedriver), against the five real services, the
//! web binary and an nginx gateway routing like the Ingress: `/api/<svc>`
//! to the services, everything else to the console.
//!
//! A shopper registers, orders and sees the notification arrive without a
//! reload, then cancels; an admin creates a product and changes its stock
//! while the shopper's page shows the new stock; a shopper cannot reach
//! admin pages or actions (the server refuses, not only the page). With
//! `STOCKMESH_UPDATE_SCREENSHOTS=1` (`make screenshots`) the main pages are
//! written to `docs/screenshots/` for the README.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Stack, Svc, binary_dir, eventually, free_ports};
use reqwest::StatusCode;
use serde_json::{Value, json};

/// A small W3C WebDriver client over HTTP (what the test needs of it). Not
/// a crate: the WebDriver crates turn on `serde_json/preserve_order`, which
/// Cargo's feature unification would impose on the whole workspace.
#[derive(Clone)]
struct WebDriver {
    http: reqwest::Client,
    session: String,
}

/// A found element's WebDriver reference.
struct WebElement {
    driver: WebDriver,
    id: String,
}

const ELEMENT_KEY: &str = "element-6066-11e4-a52e-4f735466cecf";

impl WebDriver {
    async fn new(server: &str, capabilities: Value) -> Self {
        let http = reqwest::Client::new();
        let answer: Value = http
            .post(format!("{server}/session"))
            .json(&json!({ "capabilities": { "alwaysMatch": capabilities } }))
            .send()
            .await
            .expect("chromedriver answers")
            .json()
            .await
            .expect("a JSON answer");
        let id = answer["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session: {answer}"));
        WebDriver {
            http,
            session: format!("{server}/session/{id}"),
        }
    }

    /// One command; `Err` with the WebDriver error when it failed.
    async fn command(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, String> {
        let mut request = self.http.request(method, format!("{}{path}", self.session));
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.map_err(|e| e.to_string())?;
        let ok = response.status().is_success();
        let answer: Value = response.json().await.map_err(|e| e.to_string())?;
        if ok {
            Ok(answer["value"].clone())
        } else {
            Err(answer["value"].to_string())
        }
    }

    async fn goto(&self, url: String) -> Result<(), String> {
        self.command(reqwest::Method::POST, "/url", Some(json!({ "url": url })))
            .await
            .map(|_| ())
    }

    async fn find(&self, css: &str) -> Result<WebElement, String> {
        let found = self
            .command(
                reqwest::Method::POST,
                "/element",
                Some(json!({ "using": "css selector", "value": css })),
            )
            .await?;
        let id = found[ELEMENT_KEY]
            .as_str()
            .ok_or("no element reference")?
            .to_owned();
        Ok(WebElement {
            driver: self.clone(),
            id,
        })
    }

    async fn execute(&self, script: &str, args: Vec<Value>) -> Result<Value, String> {
        self.command(
            reqwest::Method::POST,
            "/execute/sync",
            Some(json!({ "script": script, "args": args })),
        )
        .await
    }

    async fn execute_async(&self, script: &str, args: Vec<Value>) -> Result<Value, String> {
        self.command(
            reqwest::Method::POST,
            "/execute/async",
            Some(json!({ "script": script, "args": args })),
        )
        .await
    }

    async fn screenshot(&self, path: &Path) -> Result<(), String> {
        use base64::Engine as _;
        let encoded = self
            .command(reqwest::Method::GET, "/screenshot", None)
            .await?;
        let png = base64::engine::general_purpose::STANDARD
            .decode(encoded.as_str().ok_or("no screenshot data")?)
            .map_err(|e| e.to_string())?;
        std::fs::write(path, png).map_err(|e| e.to_string())
    }

    async fn quit(self) -> Result<(), String> {
        self.command(reqwest::Method::DELETE, "", None)
            .await
            .map(|_| ())
    }
}

impl WebElement {
    async fn act(&self, what: &str, body: Value) -> Result<Value, String> {
        self.driver
            .command(
                reqwest::Method::POST,
                &format!("/element/{}/{what}", self.id),
                Some(body),
            )
            .await
    }

    async fn clear(&self) -> Result<(), String> {
        self.act("clear", json!({})).await.map(|_| ())
    }

    async fn send_keys(&self, text: &str) -> Result<(), String> {
        self.act("value", json!({ "text": text })).await.map(|_| ())
    }

    async fn click(&self) -> Result<(), String> {
        self.act("click", json!({})).await.map(|_| ())
    }

    async fn text(&self) -> Result<String, String> {
        let text = self
            .driver
            .command(
                reqwest::Method::GET,
                &format!("/element/{}/text", self.id),
                None,
            )
            .await?;
        Ok(text.as_str().unwrap_or_default().to_owned())
    }

    async fn attr(&self, name: &str) -> Result<Option<String>, String> {
        let value = self
            .driver
            .command(
                reqwest::Method::GET,
                &format!("/element/{}/attribute/{name}", self.id),
                None,
            )
            .await?;
        Ok(value.as_str().map(str::to_owned))
    }
}

/// A child process stopped when the test ends, whatever happens: SIGTERM
/// first (nginx's master then stops its workers, chromedriver its
/// browsers), SIGKILL if it is still there after 3 s.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.0.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn find_program(candidates: &[&str]) -> PathBuf {
    for candidate in candidates {
        let path = Path::new(candidate);
        if path.is_absolute() && path.is_file() {
            return path.to_path_buf();
        }
        if let Some(paths) = std::env::var_os("PATH") {
            for dir in std::env::split_paths(&paths) {
                let full = dir.join(candidate);
                if full.is_file() {
                    return full;
                }
            }
        }
    }
    panic!(
        "none of {candidates:?} is installed: make test installs chromium, chromium-driver and nginx (scripts/test.sh)"
    );
}

async fn wait_listening(port: u16, what: &str) {
    eventually(what, Duration::from_secs(20), || async move {
        tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .ok()
            .map(|_| ())
    })
    .await;
}

/// The web binary, told where each service is.
async fn start_web(stack: &Stack, dir: &Path, port: u16) -> Guard {
    let log = std::fs::File::create(dir.join("web.log")).expect("web log");
    let mut command = Command::new(binary_dir().join("web"));
    command
        .env_clear()
        .env("HTTP_ADDR", format!("127.0.0.1:{port}"))
        .env("JWT_PUBLIC_KEY", &stack.keys.public_pem)
        .env("JAEGER_UI_URL", "/jaeger")
        .env("LOG_FORMAT", "json")
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log handle"))
        .stderr(log);
    for svc in Svc::ALL {
        let var = format!("{}_HTTP_URL", svc.name().to_ascii_uppercase());
        command.env(var, stack.url(svc, "").trim_end_matches('/'));
    }
    let guard = Guard(command.spawn().expect("web starts"));
    wait_listening(port, "the web console").await;
    guard
}

/// nginx as the Ingress stand-in, as `make run` configures it.
async fn start_gateway(stack: &Stack, dir: &Path, port: u16, web: u16) -> Guard {
    let nginx = find_program(&["/usr/sbin/nginx", "nginx"]);
    let upstream = |svc: Svc| {
        stack
            .url(svc, "")
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .to_owned()
    };
    let root = dir.join("nginx");
    std::fs::create_dir_all(root.join("logs")).expect("nginx dir");
    let conf = format!(
        r#"worker_processes 1;
daemon off;
pid {root}/nginx.pid;
error_log {root}/logs/error.log warn;
events {{ worker_connections 256; }}
http {{
  access_log {root}/logs/access.log;
  client_body_temp_path {root}/body;
  proxy_temp_path {root}/proxy;
  fastcgi_temp_path {root}/fastcgi;
  uwsgi_temp_path {root}/uwsgi;
  scgi_temp_path {root}/scgi;
  server {{
    listen 127.0.0.1:{port};
    proxy_http_version 1.1;
    proxy_set_header Connection "";
    proxy_set_header Host $http_host;
    location /api/users {{ proxy_pass http://{user}; }}
    location /api/products {{ proxy_pass http://{product}; }}
    location /api/orders {{ proxy_pass http://{order}; }}
    location /api/notifications {{ proxy_pass http://{notification}; }}
    location /api/notifications/stream {{ proxy_pass http://{notification}; proxy_buffering off; proxy_read_timeout 1h; }}
    location / {{ proxy_pass http://127.0.0.1:{web}; }}
  }}
}}
"#,
        root = root.display(),
        user = upstream(Svc::User),
        product = upstream(Svc::Product),
        order = upstream(Svc::Order),
        notification = upstream(Svc::Notification),
    );
    std::fs::write(root.join("nginx.conf"), conf).expect("nginx.conf");
    let guard = Guard(
        Command::new(nginx)
            .arg("-c")
            .arg(root.join("nginx.conf"))
            .arg("-p")
            .arg(&root)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nginx starts"),
    );
    wait_listening(port, "the gateway").await;
    guard
}

async fn start_chromedriver(port: u16) -> Guard {
    let driver = find_program(&["chromedriver", "/usr/bin/chromedriver"]);
    let guard = Guard(
        Command::new(driver)
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver starts"),
    );
    wait_listening(port, "chromedriver").await;
    guard
}

/// A fresh browser (own profile, so own cookies) of `width` × `height`.
async fn browser(driver_port: u16, width: u32, height: u32) -> WebDriver {
    let chromium = find_program(&["chromium", "/usr/bin/chromium"]);
    let capabilities = json!({
        "browserName": "chrome",
        "goog:chromeOptions": {
            "binary": chromium.to_string_lossy(),
            "args": [
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--lang=en-GB",
                format!("--window-size={width},{height}"),
            ],
        },
    });
    WebDriver::new(&format!("http://127.0.0.1:{driver_port}"), capabilities).await
}

/// Waits until `css` matches an element, for at most `secs`.
async fn element(driver: &WebDriver, css: &str, secs: u64) -> WebElement {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Ok(found) = driver.find(css).await {
            return found;
        }
        assert!(
            Instant::now() < deadline,
            "no element {css} within {secs} s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until `script` (returning a value) returns `expected`.
async fn until_script(driver: &WebDriver, script: &str, expected: Value, secs: u64) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut last = Value::Null;
    while Instant::now() < deadline {
        if let Ok(ret) = driver.execute(script, Vec::new()).await {
            last = ret;
            if last == expected {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    panic!("{script} returned {last}, not {expected}, within {secs} s");
}

async fn fill(driver: &WebDriver, css: &str, text: &str) {
    let input = element(driver, css, 10).await;
    input.clear().await.expect("clear");
    input.send_keys(text).await.expect("type");
}

async fn click(driver: &WebDriver, css: &str) {
    element(driver, css, 10).await.click().await.expect("click");
}

/// `fetch` from inside the page (same origin, the page's cookies): status.
async fn fetch_status(driver: &WebDriver, method: &str, path: &str, body: Option<Value>) -> i64 {
    let script = r#"
        const [method, path, body, done] = arguments;
        fetch(path, { method, credentials: "same-origin",
            headers: body ? { "content-type": "application/json" } : {},
            body: body ? JSON.stringify(body) : undefined })
          .then((r) => done(r.status)).catch(() => done(-1));"#;
    let args = vec![json!(method), json!(path), body.unwrap_or(Value::Null)];
    driver
        .execute_async(script, args)
        .await
        .expect("script runs")
        .as_i64()
        .expect("a status")
}

fn screenshots_dir() -> Option<PathBuf> {
    std::env::var_os("STOCKMESH_UPDATE_SCREENSHOTS")
        .filter(|v| v == "1")
        .map(|_| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/screenshots"))
}

async fn screenshot(driver: &WebDriver, dir: &Path, name: &str) {
    let target = screenshots_dir().unwrap_or_else(|| dir.to_path_buf());
    std::fs::create_dir_all(&target).expect("screenshot dir");
    driver
        .screenshot(&target.join(format!("{name}.png")))
        .await
        .expect("screenshot");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn shoppers_and_admins_use_the_console_in_a_real_browser() {
    let stack = Stack::start().await;
    let dir = stack.log_dir.clone();
    let ports = free_ports(3);
    let (web_port, gateway_port, driver_port) = (ports[0], ports[1], ports[2]);
    let _web = start_web(&stack, &dir, web_port).await;
    let _gateway = start_gateway(&stack, &dir, gateway_port, web_port).await;
    let _chromedriver = start_chromedriver(driver_port).await;
    let base = format!("http://127.0.0.1:{gateway_port}");

    // The console's files come through the gateway with their security headers.
    let index = reqwest::get(format!("{base}/")).await.expect("index");
    assert_eq!(index.status(), StatusCode::OK);
    let csp = index.headers()["content-security-policy"]
        .to_str()
        .expect("csp")
        .to_owned();
    assert!(csp.contains("script-src 'self'"), "{csp}");

    let shopper = browser(driver_port, 1280, 900).await;
    let admin = browser(driver_port, 1280, 900).await;

    // A shopper registers (and is logged in by it).
    shopper
        .goto(format!("{base}/#/register"))
        .await
        .expect("open");
    fill(&shopper, "#name", "Grace Shopper").await;
    fill(&shopper, "#email", "grace@console.test").await;
    fill(&shopper, "#password", "correct horse battery").await;
    click(&shopper, "form button[type=submit]").await;
    until_script(
        &shopper,
        "return document.getElementById('who').textContent",
        json!("(grace@console.test)"),
        15,
    )
    .await;

    // Every form control has a label.
    until_script(
        &shopper,
        "return [...document.querySelectorAll('input,select')].every((i) => i.labels && i.labels.length > 0)",
        json!(true),
        5,
    )
    .await;

    // An admin logs in and creates a product.
    let (admin_email, admin_password) = stack.admin_credentials();
    admin.goto(format!("{base}/#/login")).await.expect("open");
    fill(&admin, "#email", admin_email).await;
    fill(&admin, "#password", admin_password).await;
    click(&admin, "form button[type=submit]").await;
    until_script(
        &admin,
        "return !document.querySelector('[data-when=admin]').hidden",
        json!(true),
        15,
    )
    .await;
    admin
        .goto(format!("{base}/#/admin/products"))
        .await
        .expect("open");
    fill(&admin, "#new-name", "Console Mug").await;
    fill(&admin, "#new-description", "Stoneware, 350 ml").await;
    fill(&admin, "#new-price", "12.50").await;
    fill(&admin, "#new-stock", "5").await;
    click(&admin, "form[aria-label='New product'] button[type=submit]").await;
    element(&admin, "[data-admin-product='Console Mug']", 10).await;

    // The shopper's shop page shows it, and the admin's stock change, live.
    shopper.goto(format!("{base}/#/")).await.expect("open");
    let stock_of_mug = "const c = document.querySelector(\"[data-product='Console Mug'] [data-stock]\"); return c ? c.getAttribute('data-stock') : null";
    until_script(&shopper, stock_of_mug, json!("5"), 15).await;
    fill(&admin, "[data-set-stock='Console Mug']", "9").await;
    click(&admin, "[data-stock-button='Console Mug']").await;
    until_script(&shopper, stock_of_mug, json!("9"), 15).await;
    screenshot(&admin, &dir, "admin-products").await;

    // The shopper orders 2; the notification arrives without a reload
    // (the marker set on the page survives), with the unread count.
    shopper
        .execute("window.__noReload = 42", Vec::new())
        .await
        .expect("marker");
    fill(
        &shopper,
        "[data-product='Console Mug'] input[data-qty]",
        "2",
    )
    .await;
    click(&shopper, "[data-order='Console Mug']").await;
    until_script(
        &shopper,
        "return document.getElementById('unread').textContent",
        json!("1"),
        20,
    )
    .await;
    until_script(&shopper, "return window.__noReload", json!(42), 1).await;
    until_script(&shopper, stock_of_mug, json!("7"), 15).await;
    screenshot(&shopper, &dir, "shop").await;

    // On the notifications page, the next one (the cancel) appears live.
    shopper
        .goto(format!("{base}/#/orders"))
        .await
        .expect("open");
    let status = element(&shopper, "[data-status]", 10).await;
    assert_eq!(status.text().await.expect("text"), "CONFIRMED");
    let order_row = element(&shopper, "tr[data-order-id]", 5).await;
    let order_id = order_row
        .attr("data-order-id")
        .await
        .expect("attr")
        .expect("order id");
    let trace = element(&shopper, "[data-trace]", 5).await;
    assert!(
        trace
            .attr("href")
            .await
            .expect("href")
            .is_some_and(|h| h.starts_with("/jaeger/trace/"))
    );
    screenshot(&shopper, &dir, "orders").await;
    shopper
        .goto(format!("{base}/#/notifications"))
        .await
        .expect("open");
    element(&shopper, "#notification-list li", 10).await;
    shopper
        .execute("window.__noReload = 43", Vec::new())
        .await
        .expect("marker");
    // Cancel from another tab of the same shopper's session: this page
    // must learn of it by itself.
    let cancel = fetch_status(
        &shopper,
        "POST",
        &format!("/api/orders/{order_id}/cancel"),
        None,
    )
    .await;
    assert_eq!(cancel, 200);
    until_script(
        &shopper,
        "return document.querySelectorAll('#notification-list li').length",
        json!(2),
        20,
    )
    .await;
    until_script(&shopper, "return window.__noReload", json!(43), 1).await;
    until_script(
        &shopper,
        "return document.getElementById('unread').textContent",
        json!("2"),
        5,
    )
    .await;
    screenshot(&shopper, &dir, "notifications").await;
    click(&shopper, "#notification-list li.unread button").await;
    until_script(
        &shopper,
        "return document.getElementById('unread').textContent",
        json!("1"),
        5,
    )
    .await;
    shopper
        .goto(format!("{base}/#/orders"))
        .await
        .expect("open");
    until_script(
        &shopper,
        "const s = document.querySelector('[data-status]'); return s ? s.textContent : null",
        json!("CANCELLED"),
        10,
    )
    .await;

    // A shopper cannot reach admin pages or actions: the page says so and
    // the server refuses every admin call made with the shopper's session.
    shopper
        .goto(format!("{base}/#/admin/products"))
        .await
        .expect("open");
    element(&shopper, "#forbidden", 10).await;
    assert!(
        shopper.find("#new-name").await.is_err(),
        "no admin form for a shopper"
    );
    let product_id = element(
        &admin,
        "[data-admin-product='Console Mug'] input[id^=stock-]",
        5,
    )
    .await
    .attr("id")
    .await
    .expect("attr")
    .expect("id")
    .trim_start_matches("stock-")
    .to_owned();
    let refused = [
        (
            "POST",
            "/api/products".to_owned(),
            Some(json!({"name": "x", "price": {"amount_minor": 1, "currency": "EUR"}})),
        ),
        (
            "PUT",
            format!("/api/products/{product_id}/stock"),
            Some(json!({"quantity": 1000})),
        ),
        ("DELETE", format!("/api/products/{product_id}"), None),
        ("GET", "/api/orders?scope=all".to_owned(), None),
        ("GET", "/api/users".to_owned(), None),
        ("GET", "/api/console/system".to_owned(), None),
    ];
    for (method, path, body) in refused {
        assert_eq!(
            fetch_status(&shopper, method, &path, body).await,
            403,
            "{method} {path}"
        );
    }

    // A write another site makes the browser send is refused.
    let foreign = reqwest::Client::new()
        .post(format!("{base}/api/orders"))
        .header("origin", "http://evil.example")
        .bearer_auth(stack.admin_token().await)
        .json(&json!({"product_id": product_id, "quantity": 1}))
        .send()
        .await
        .expect("request");
    assert_eq!(foreign.status(), StatusCode::FORBIDDEN);

    // The admin sees the shopper's order among all, filtered, and the system page.
    admin
        .goto(format!("{base}/#/admin/orders?status=CANCELLED"))
        .await
        .expect("open");
    until_script(
        &admin,
        "return document.querySelectorAll('#admin-orders tr').length",
        json!(1),
        10,
    )
    .await;
    screenshot(&admin, &dir, "admin-orders").await;
    admin
        .goto(format!("{base}/#/admin/users"))
        .await
        .expect("open");
    element(&admin, "[data-role='grace@console.test']", 10).await;
    admin
        .goto(format!("{base}/#/admin/system"))
        .await
        .expect("open");
    until_script(
        &admin,
        "return document.querySelectorAll('[data-ready=true]').length",
        json!(5),
        15,
    )
    .await;
    screenshot(&admin, &dir, "admin-system").await;

    // Phone width: one column, nothing wider than the screen.
    let phone = browser(driver_port, 390, 844).await;
    phone.goto(format!("{base}/#/")).await.expect("open");
    element(&phone, "[data-product='Console Mug']", 10).await;
    until_script(
        &phone,
        "return document.documentElement.scrollWidth <= window.innerWidth",
        json!(true),
        5,
    )
    .await;
    screenshot(&phone, &dir, "shop-phone").await;

    for driver in [shopper, admin, phone] {
        let _ = driver.quit().await;
    }
    drop(stack);
}
