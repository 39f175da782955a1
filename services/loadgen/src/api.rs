//! The shop API as the load generator uses it.

use anyhow::{Context, bail};
use chrono::{DateTime, Utc};
use serde_json::{Value, json};

/// Every shopper's password (the shoppers are loadgen's own, per run).
pub const SHOPPER_PASSWORD: &str = "loadgen-password";

/// Where each API prefix is served: one base URL (the Ingress or the local
/// gateway), or per-service URLs (`LOADGEN_USER_URL`, `LOADGEN_PRODUCT_URL`,
/// `LOADGEN_INVENTORY_URL`, `LOADGEN_ORDER_URL`, `LOADGEN_NOTIFICATION_URL`,
/// as the chart's Job and test pod set). Inventory has no public API: its
/// URL is used only by `--smoke`, for its `/readyz`.
#[derive(Clone)]
pub struct Api {
    pub users: String,
    pub products: String,
    pub inventory: String,
    pub orders: String,
    /// Every order replica: `LOADGEN_ORDER_URL` may list several, comma
    /// separated (`make bench`'s scale-out step, replicas without a
    /// balancer in front); orders are spread over them in turn.
    pub order_replicas: Vec<String>,
    pub notifications: String,
    /// Services whose URL came from their own `LOADGEN_*_URL` (not the
    /// base URL), by service name.
    pub own_url: Vec<&'static str>,
    pub http: reqwest::Client,
}

impl Api {
    pub fn new(base: &str) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(1024)
            .timeout(std::time::Duration::from_secs(30))
            .build()?;
        let mut own_url = Vec::new();
        let mut url = |service: &'static str| {
            let var = format!("LOADGEN_{}_URL", service.to_ascii_uppercase());
            match std::env::var(var).ok().filter(|v| !v.is_empty()) {
                Some(v) => {
                    own_url.push(service);
                    v.trim_end_matches('/').to_owned()
                }
                None => base.to_owned(),
            }
        };
        let order_replicas: Vec<String> = url("order")
            .split(',')
            .map(|u| u.trim().trim_end_matches('/').to_owned())
            .filter(|u| !u.is_empty())
            .collect();
        Ok(Self {
            users: url("user"),
            products: url("product"),
            inventory: url("inventory"),
            orders: order_replicas.first().cloned().unwrap_or_default(),
            order_replicas,
            notifications: url("notification"),
            own_url,
            http,
        })
    }

    pub async fn login(&self, email: &str, password: &str) -> anyhow::Result<Session> {
        let response = self
            .http
            .post(format!("{}/api/users/login", self.users))
            .json(&json!({"email": email, "password": password}))
            .send()
            .await
            .context("login request")?;
        let status = response.status();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        if !status.is_success() {
            bail!("login of {email} answered {status}: {body}");
        }
        Session::from_answer(&body).with_context(|| format!("login of {email}"))
    }

    /// Trades the session's refresh token for fresh tokens: access tokens
    /// live minutes (`JWT_TTL_SECONDS`), a run may last longer.
    pub async fn refresh(&self, session: &Session) -> anyhow::Result<Session> {
        let response = self
            .http
            .post(format!("{}/api/users/refresh", self.users))
            .json(&json!({"refresh_token": session.refresh_token}))
            .send()
            .await
            .context("refresh request")?;
        let status = response.status();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        if !status.is_success() {
            bail!("refresh answered {status}: {body}");
        }
        Session::from_answer(&body).context("refresh")
    }

    /// Registers a fresh shopper (password [`SHOPPER_PASSWORD`]) and returns
    /// `(session, user id, email)`.
    pub async fn shopper(&self, run: &str, n: usize) -> anyhow::Result<(Session, String, String)> {
        let email = format!("loadgen-{run}-{n}@example.com");
        let password = SHOPPER_PASSWORD;
        let response = self
            .http
            .post(format!("{}/api/users/register", self.users))
            .json(&json!({"email": email, "password": password, "name": format!("Shopper {n}")}))
            .send()
            .await?;
        let status = response.status();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        if status.as_u16() != 201 {
            bail!("register answered {status}: {body}");
        }
        let id = body["id"]
            .as_str()
            .context("register answered no id")?
            .to_owned();
        Ok((self.login(&email, password).await?, id, email))
    }

    /// Creates a product with `stock` units (`admin` is an access token);
    /// returns its id.
    pub async fn product(&self, admin: &str, name: &str, stock: i64) -> anyhow::Result<String> {
        let response = self
            .http
            .post(format!("{}/api/products", self.products))
            .bearer_auth(admin)
            .json(&json!({"name": name, "description": "load test", "price": {"amount_minor": 199, "currency": "EUR"}, "initial_stock": stock}))
            .send()
            .await?;
        let status = response.status();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        if status.as_u16() != 201 {
            bail!("creating product answered {status}: {body}");
        }
        if body["stock"].is_null() {
            bail!("product created but inventory did not record its stock: {body}");
        }
        body["id"]
            .as_str()
            .map(str::to_owned)
            .context("no product id")
    }
}

/// A logged-in user's tokens, as a login or a refresh answers them.
#[derive(Clone)]
pub struct Session {
    pub token: String,
    pub refresh_token: String,
    /// When to refresh: half-way through the access token's life, so a
    /// slow refresh still lands before it expires.
    pub refresh_at: DateTime<Utc>,
}

impl Session {
    fn from_answer(body: &Value) -> anyhow::Result<Self> {
        let text = |field: &str| {
            body[field]
                .as_str()
                .map(str::to_owned)
                .with_context(|| format!("the answer has no {field}: {body}"))
        };
        let expires_at: DateTime<Utc> = text("expires_at")?
            .parse()
            .context("expires_at is not a timestamp")?;
        let now = Utc::now();
        Ok(Self {
            token: text("token")?,
            refresh_token: text("refresh_token")?,
            refresh_at: now + (expires_at - now) / 2,
        })
    }
}
