//! The shop API as the load generator uses it.

use anyhow::{Context, bail};
use serde_json::{Value, json};

/// Where each API prefix is served: one base URL (the Ingress or the local
/// gateway), or per-service URLs (`LOADGEN_USER_URL`, `LOADGEN_PRODUCT_URL`,
/// `LOADGEN_ORDER_URL`, `LOADGEN_NOTIFICATION_URL`, as the chart's Job sets).
#[derive(Clone)]
pub struct Api {
    pub users: String,
    pub products: String,
    pub orders: String,
    pub notifications: String,
    pub http: reqwest::Client,
}

impl Api {
    pub fn new(base: &str) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(1024)
            .timeout(std::time::Duration::from_secs(30))
            .build()?;
        let url = |var: &str| {
            std::env::var(var)
                .ok()
                .filter(|v| !v.is_empty())
                .map(|v| v.trim_end_matches('/').to_owned())
                .unwrap_or_else(|| base.to_owned())
        };
        Ok(Self {
            users: url("LOADGEN_USER_URL"),
            products: url("LOADGEN_PRODUCT_URL"),
            orders: url("LOADGEN_ORDER_URL"),
            notifications: url("LOADGEN_NOTIFICATION_URL"),
            http,
        })
    }

    pub async fn login(&self, email: &str, password: &str) -> anyhow::Result<String> {
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
        body["token"]
            .as_str()
            .map(str::to_owned)
            .context("login answered no token")
    }

    /// Registers a fresh shopper and returns `(token, user id)`.
    pub async fn shopper(&self, run: &str, n: usize) -> anyhow::Result<(String, String)> {
        let email = format!("loadgen-{run}-{n}@example.com");
        let password = "loadgen-password";
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
        Ok((self.login(&email, password).await?, id))
    }

    /// Creates a product with `stock` units; returns its id.
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
