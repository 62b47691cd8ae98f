//! Placeholder: being written.
pub async fn seed_file(_pool: &sqlx::PgPool, _file: &std::path::Path) -> anyhow::Result<String> {
    anyhow::bail!("not yet")
}
