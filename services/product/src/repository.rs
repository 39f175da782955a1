//! PostgreSQL storage of the catalog.

use sqlx::{PgPool, Row};
use stockmesh_platform::db::span as db_span;
use tracing::Instrument;
use uuid::Uuid;

use crate::domain::{Money, Product};
use crate::error::ProductError;

const COLUMNS: &str = "id, name, description, price_minor, currency, stock_status, initial_stock, created_at, updated_at";

fn product_from_row(row: &sqlx::postgres::PgRow) -> Result<Product, ProductError> {
    let status: String = row.try_get("stock_status")?;
    Ok(Product {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        description: row.try_get("description")?,
        price: Money {
            amount_minor: row.try_get("price_minor")?,
            currency: row.try_get("currency")?,
        },
        stock_synced: status == "synced",
        initial_stock: row.try_get("initial_stock")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
    })
}

/// Fields to change; `None` keeps the current value.
#[derive(Debug, Default, Clone)]
pub struct ProductChanges {
    pub name: Option<String>,
    pub description: Option<String>,
    pub price: Option<Money>,
}

#[derive(Clone)]
pub struct ProductRepository {
    pool: PgPool,
}

impl ProductRepository {
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }

    /// Stores a new product whose stock is not yet recorded in inventory.
    pub async fn insert(
        &self,
        name: &str,
        description: &str,
        price: &Money,
        initial_stock: i64,
    ) -> Result<Product, ProductError> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "INSERT INTO products (id, name, description, price_minor, currency, initial_stock) \
             VALUES ($1, $2, $3, $4, $5, $6) RETURNING {COLUMNS}"
        )))
        .bind(Uuid::now_v7())
        .bind(name)
        .bind(description)
        .bind(price.amount_minor)
        .bind(&price.currency)
        .bind(initial_stock)
        .fetch_one(&self.pool)
        .instrument(db_span("insert", "products"))
        .await?;
        product_from_row(&row)
    }

    pub async fn mark_stock_synced(&self, id: Uuid) -> Result<(), ProductError> {
        sqlx::query("UPDATE products SET stock_status = 'synced' WHERE id = $1")
            .bind(id)
            .execute(&self.pool)
            .instrument(db_span("update", "products"))
            .await?;
        Ok(())
    }

    /// Live products whose stock record may still be missing, oldest first.
    pub async fn pending_stock(&self, limit: i64) -> Result<Vec<Product>, ProductError> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM products WHERE stock_status = 'pending' AND deleted_at IS NULL \
             ORDER BY created_at LIMIT $1"
        )))
        .bind(limit)
        .fetch_all(&self.pool)
        .instrument(db_span("select", "products"))
        .await?;
        rows.iter().map(product_from_row).collect()
    }

    pub async fn by_id(&self, id: Uuid) -> Result<Option<Product>, ProductError> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM products WHERE id = $1 AND deleted_at IS NULL"
        )))
        .bind(id)
        .fetch_optional(&self.pool)
        .instrument(db_span("select", "products"))
        .await?;
        row.as_ref().map(product_from_row).transpose()
    }

    pub async fn by_ids(&self, ids: &[Uuid]) -> Result<Vec<Product>, ProductError> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM products WHERE id = ANY($1) AND deleted_at IS NULL ORDER BY created_at, id"
        )))
        .bind(ids)
        .fetch_all(&self.pool)
        .instrument(db_span("select", "products"))
        .await?;
        rows.iter().map(product_from_row).collect()
    }

    /// Live products, oldest first; with `search`, only those whose name or
    /// description contains it (case-insensitive, taken literally: `%` and
    /// `_` match themselves).
    pub async fn list(
        &self,
        search: Option<&str>,
        limit: i64,
        offset: i64,
    ) -> Result<(Vec<Product>, i64), ProductError> {
        const MATCHES: &str = "deleted_at IS NULL AND ($1::text IS NULL \
             OR name ILIKE '%' || $1 || '%' ESCAPE '\\' \
             OR description ILIKE '%' || $1 || '%' ESCAPE '\\')";
        let pattern = search.map(|text| {
            text.replace('\\', "\\\\")
                .replace('%', "\\%")
                .replace('_', "\\_")
        });
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM products WHERE {MATCHES} ORDER BY created_at, id LIMIT $2 OFFSET $3"
        )))
        .bind(&pattern)
        .bind(limit)
        .bind(offset)
        .fetch_all(&self.pool)
        .instrument(db_span("select", "products"))
        .await?;
        let total: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT count(*) FROM products WHERE {MATCHES}"
        )))
        .bind(&pattern)
        .fetch_one(&self.pool)
        .instrument(db_span("select", "products"))
        .await?;
        Ok((
            rows.iter()
                .map(product_from_row)
                .collect::<Result<_, _>>()?,
            total,
        ))
    }

    pub async fn update(
        &self,
        id: Uuid,
        changes: &ProductChanges,
    ) -> Result<Product, ProductError> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "UPDATE products SET name = COALESCE($2, name), description = COALESCE($3, description), \
             price_minor = COALESCE($4, price_minor), currency = COALESCE($5, currency), updated_at = now() \
             WHERE id = $1 AND deleted_at IS NULL RETURNING {COLUMNS}"
        )))
        .bind(id)
        .bind(changes.name.as_deref())
        .bind(changes.description.as_deref())
        .bind(changes.price.as_ref().map(|p| p.amount_minor))
        .bind(changes.price.as_ref().map(|p| p.currency.as_str()))
        .fetch_optional(&self.pool)
        .instrument(db_span("update", "products"))
        .await?;
        row.as_ref()
            .map(product_from_row)
            .transpose()?
            .ok_or(ProductError::NotFound)
    }

    pub async fn soft_delete(&self, id: Uuid) -> Result<(), ProductError> {
        let done = sqlx::query(
            "UPDATE products SET deleted_at = now() WHERE id = $1 AND deleted_at IS NULL",
        )
        .bind(id)
        .execute(&self.pool)
        .instrument(db_span("update", "products"))
        .await?;
        if done.rows_affected() == 0 {
            return Err(ProductError::NotFound);
        }
        Ok(())
    }
}
