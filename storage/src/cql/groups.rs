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
use crate::groups::{GroupChange, List, Listed, Roster};

/// The clustering key of a list entry in a group's partition: `~` sorts
/// after every character of a user id, so members come first and a
/// members page stops before the lists.
fn list_row(list: List, user: &str) -> String {
    format!("~{}:{user}", char::from(list.tag()))
}

/// The list and user of a list entry's clustering key.
fn parse_list_row(key: &str) -> Option<(List, &str)> {
    let rest = key.strip_prefix('~')?;
    let (tag, user) = rest.split_once(':')?;
    let [tag] = tag.as_bytes() else {
        return None;
    };
    Some((List::from_tag(*tag)?, user))
}

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

    /// The group's members and lists.
    pub(crate) async fn roster(&self, group: &str) -> Result<Roster, StoreError> {
        let rows: Vec<(String, Option<Vec<u8>>)> =
            self.rows(&self.im.group_rows, (group, i32::MAX)).await?;
        let mut roster = Roster::default();
        for (key, value) in rows {
            let Some(value) = value else { continue };
            match parse_list_row(&key) {
                Some((list, user)) => {
                    roster
                        .lists
                        .insert((list, user.to_owned()), decode_proto(&value)?);
                }
                None => {
                    let m: v1::GroupMember = decode_proto(&value)?;
                    roster.members.insert(m.user.clone(), m);
                }
            }
        }
        Ok(roster)
    }

    /// Entries of one list after `after`, at most `limit`.
    pub(crate) async fn listed(
        &self,
        group: &str,
        list: List,
        after: &str,
        limit: usize,
    ) -> Result<Vec<Listed>, StoreError> {
        let limit = i32::try_from(limit).unwrap_or(i32::MAX);
        let from = list_row(list, after);
        // `;` follows `:`, so this bounds the list's keys.
        let to = format!("~{};", char::from(list.tag()));
        let rows: Vec<(String, Option<Vec<u8>>)> = self
            .rows(&self.im.listed_range, (group, from, to, limit))
            .await?;
        let mut out = Vec::new();
        for (key, value) in rows {
            let (Some((_, user)), Some(value)) = (parse_list_row(&key), value) else {
                continue;
            };
            let entry: v1::GroupInvitation = decode_proto(&value)?;
            out.push(Listed {
                user: user.to_owned(),
                by: entry.by,
            });
        }
        Ok(out)
    }

    /// One list entry, if `user` is on the list.
    pub(crate) async fn listing(
        &self,
        group: &str,
        list: List,
        user: &str,
    ) -> Result<Option<v1::GroupInvitation>, StoreError> {
        let rows: Vec<(Option<Vec<u8>>,)> = self
            .rows(&self.im.member_get, (group, list_row(list, user)))
            .await?;
        match rows.into_iter().next() {
            Some((Some(v),)) => Ok(Some(decode_proto(&v)?)),
            _ => Ok(None),
        }
    }

    /// Groups in `user`'s invitation index (a superset), at most `limit`.
    pub(crate) async fn invitation_index(
        &self,
        user: &str,
        limit: usize,
    ) -> Result<Vec<String>, StoreError> {
        let limit = i32::try_from(limit).unwrap_or(i32::MAX);
        let rows: Vec<(String,)> = self.rows(&self.im.invitations, (user, limit)).await?;
        Ok(rows.into_iter().map(|(g,)| g).collect())
    }

    /// Adds `group` to (`on`) or removes it from `user`'s invitation index.
    pub(crate) async fn index_invitation(
        &self,
        user: &str,
        group: &str,
        on: bool,
    ) -> Result<(), StoreError> {
        let statement = if on {
            &self.im.invitation_put
        } else {
            &self.im.invitation_delete
        };
        self.session
            .execute_unpaged(statement, (user, group))
            .await
            .map_err(cql_error)?;
        Ok(())
    }

    /// `user`'s group-adds setting, if set.
    pub(crate) async fn group_adds(&self, user: &str) -> Result<Option<i32>, StoreError> {
        let rows: Vec<(Option<i32>,)> = self.rows(&self.im.settings_get, (user,)).await?;
        Ok(rows.into_iter().next().and_then(|(v,)| v))
    }

    /// Sets `user`'s group-adds setting.
    pub(crate) async fn set_group_adds(&self, user: &str, adds: i32) -> Result<(), StoreError> {
        self.session
            .execute_unpaged(&self.im.settings_put, (adds, user))
            .await
            .map_err(cql_error)?;
        Ok(())
    }

    /// Changes a group in one lightweight transaction on its partition:
    /// the record (checked against `expected`, `None` to create), members
    /// put and removed, list entries written and deleted. False when the
    /// version did not match.
    pub(crate) async fn group_write(
        &self,
        group: &str,
        expected: Option<i64>,
        change: &GroupChange,
    ) -> Result<bool, StoreError> {
        let info = &change.info;
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
        for m in &change.put {
            batch.append_statement(self.im.member_put.clone());
            values.push(Box::new((
                group.to_owned(),
                m.user.clone(),
                m.encode_to_vec(),
            )));
        }
        for user in &change.removed {
            batch.append_statement(self.im.member_delete.clone());
            values.push(Box::new((group.to_owned(), user.clone())));
        }
        for (list, user, entry) in &change.listed {
            batch.append_statement(self.im.member_put.clone());
            values.push(Box::new((
                group.to_owned(),
                list_row(*list, user),
                entry.encode_to_vec(),
            )));
        }
        for (list, user) in &change.unlisted {
            batch.append_statement(self.im.member_delete.clone());
            values.push(Box::new((group.to_owned(), list_row(*list, user))));
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
