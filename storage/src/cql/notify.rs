//! Prepared statements of offline push (schema migration 4): push tokens,
//! who holds each token, preview settings.

use std::sync::Arc;

use scylla::client::session::Session;
use scylla::statement::Consistency;
use scylla::statement::prepared::PreparedStatement;

use super::codec::prepare;
use crate::StoreError;

/// The statements over one session.
pub(crate) struct NotifyStatements {
    pub(crate) token_put: PreparedStatement,
    pub(crate) token_get: PreparedStatement,
    pub(crate) token_delete: PreparedStatement,
    pub(crate) tokens_of: PreparedStatement,
    pub(crate) owner_put: PreparedStatement,
    pub(crate) owner_get: PreparedStatement,
    pub(crate) owner_delete: PreparedStatement,
    pub(crate) settings_put: PreparedStatement,
    pub(crate) settings_get: PreparedStatement,
}

impl NotifyStatements {
    /// Prepares every statement (the keyspace is already in use).
    pub(crate) async fn open(session: &Arc<Session>) -> Result<Self, StoreError> {
        let prepare = |cql, idempotent| prepare(session, cql, Consistency::LocalQuorum, idempotent);
        Ok(NotifyStatements {
            token_put: prepare(
                "INSERT INTO push_tokens (user_id, device, entry) VALUES (?, ?, ?)",
                true,
            )
            .await?,
            token_get: prepare(
                "SELECT entry FROM push_tokens WHERE user_id = ? AND device = ?",
                true,
            )
            .await?,
            token_delete: prepare(
                "DELETE FROM push_tokens WHERE user_id = ? AND device = ?",
                true,
            )
            .await?,
            tokens_of: prepare(
                "SELECT device, entry FROM push_tokens WHERE user_id = ? LIMIT ?",
                true,
            )
            .await?,
            owner_put: prepare(
                "INSERT INTO push_token_owners (token_key, user_id, device) VALUES (?, ?, ?)",
                true,
            )
            .await?,
            owner_get: prepare(
                "SELECT user_id, device FROM push_token_owners WHERE token_key = ?",
                true,
            )
            .await?,
            owner_delete: prepare("DELETE FROM push_token_owners WHERE token_key = ?", true)
                .await?,
            settings_put: prepare(
                "INSERT INTO push_settings (user_id, settings) VALUES (?, ?)",
                true,
            )
            .await?,
            settings_get: prepare("SELECT settings FROM push_settings WHERE user_id = ?", true)
                .await?,
        })
    }
}
