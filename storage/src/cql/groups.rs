//! Group records, members, each user's group index and the members' read
//! cursors in group logs, over CQL (tables of schema migration 2).

use prost::Message as _;
use qim_proto::v1;
use scylla::statement::batch::{Batch, BatchType};
use scylla::statement::{Consistency, SerialConsistency};

use super::Cql;
use super::codec::{applied, cql_error, seq_from_cql};
use super::im::decode_proto;
use super::writes::Values;
use crate::StoreError;

impl Cql {
    /// A group record and its version; `serial` reads at `LOCAL_SERIAL`
    /// (completing a transaction in flight).
    pub(crate) async fn group(
        &self,
        group: &str,
        serial: bool,
    ) -> Result<Option<(v1::GroupInfo, i64)>, StoreError> {
        let statement = if serial {
            &self.im.group_get_serial
        } else {
            &self.im.group_get
        };
        let rows: Vec<(Option<Vec<u8>>, Option<i64>)> = self.rows(statement, (group,)).await?;
        match rows.into_iter().next() {
            Some((Some(info), Some(version))) => Ok(Some((decode_proto(&info)?, version))),
            _ => Ok(None),
        }
    }

    /// One member.
    pub(crate) async fn member(
        &self,
        group: &str,
        user: &str,
    ) -> Result<Option<v1::GroupMember>, StoreError> {
        let rows: Vec<(Option<Vec<u8>>,)> = self.rows(&self.im.member_get, (group, user)).await?;
        match rows.into_iter().next() {
            Some((Some(m),)) => Ok(Some(decode_proto(&m)?)),
            _ => Ok(None),
        }
    }

    /// Members after `after` by user id, at most `limit`.
    pub(crate) async fn members(
        &self,
        group: &str,
        after: &str,
        limit: usize,
    ) -> Result<Vec<v1::GroupMember>, StoreError> {
        let limit = i32::try_from(limit).unwrap_or(i32::MAX);
        let rows: Vec<(Option<Vec<u8>>,)> = self
            .rows(&self.im.members_after, (group, after, limit))
            .await?;
        rows.into_iter()
            .filter_map(|(m,)| m)
            .map(|m| decode_proto(&m))
            .collect()
    }

    /// Changes a group in one lightweight transaction on its partition:
    /// the record (checked against `expected`, `None` to create), members
    /// put and removed. False when the version did not match.
    pub(crate) async fn group_write(
        &self,
        group: &str,
        expected: Option<i64>,
        info: &v1::GroupInfo,
        put: &[v1::GroupMember],
        remove: &[String],
    ) -> Result<bool, StoreError> {
        let mut batch = Batch::new(BatchType::Logged);
        batch.set_consistency(Consistency::LocalQuorum);
        batch.set_serial_consistency(Some(SerialConsistency::LocalSerial));
        let mut values: Vec<Values> = Vec::new();
        let version = expected.unwrap_or(0) + 1;
        match expected {
            None => {
                batch.append_statement(self.im.group_create.clone());
                values.push(Box::new((info.encode_to_vec(), version, group.to_owned())));
            }
            Some(v) => {
                batch.append_statement(self.im.group_update.clone());
                values.push(Box::new((
                    info.encode_to_vec(),
                    version,
                    group.to_owned(),
                    v,
                )));
            }
        }
        for m in put {
            batch.append_statement(self.im.member_put.clone());
            values.push(Box::new((
                group.to_owned(),
                m.user.clone(),
                m.encode_to_vec(),
            )));
        }
        for user in remove {
            batch.append_statement(self.im.member_delete.clone());
            values.push(Box::new((group.to_owned(), user.clone())));
        }
        let result = self
            .session
            .batch(&batch, &values)
            .await
            .map_err(cql_error)?;
        applied(result)
    }

    /// Serialises a post with the group's changes: a transaction that
    /// succeeds only while the group is still at `version`.
    pub(crate) async fn group_check(&self, group: &str, version: i64) -> Result<bool, StoreError> {
        let result = self
            .session
            .execute_unpaged(&self.im.group_check, (version, group, version))
            .await
            .map_err(cql_error)?;
        applied(result)
    }

    /// The groups in `user`'s index.
    pub(crate) async fn user_groups(&self, user: &str) -> Result<Vec<String>, StoreError> {
        let rows: Vec<(String,)> = self.rows(&self.im.user_groups, (user,)).await?;
        Ok(rows.into_iter().map(|(g,)| g).collect())
    }

    /// A member's read cursor in a group log (0 when none).
    pub(crate) async fn group_cursor(&self, group: &str, user: &str) -> Result<u64, StoreError> {
        let rows: Vec<(Option<i64>,)> = self.rows(&self.im.cursor_get, (group, user)).await?;
        match rows.into_iter().next() {
            Some((Some(s),)) => seq_from_cql(s),
            _ => Ok(0),
        }
    }

    /// Every member's read cursor in a group log.
    pub(crate) async fn group_cursors(
        &self,
        group: &str,
    ) -> Result<Vec<(String, u64)>, StoreError> {
        let rows: Vec<(String, Option<i64>)> = self.rows(&self.im.cursors, (group,)).await?;
        rows.into_iter()
            .map(|(u, s)| Ok((u, seq_from_cql(s.unwrap_or(0))?)))
            .collect()
    }
}
