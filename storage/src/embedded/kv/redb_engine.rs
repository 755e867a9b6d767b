//! The redb engine: one file, one redb table per store table.

use std::ops::Bound;
use std::path::Path;
use std::sync::Arc;

use redb::{Durability, ReadableDatabase as _, ReadableTable as _, TableDefinition};

use super::{Iter, KvError, Slice, Write};

/// The database file in the store's directory.
pub(super) const FILE: &str = "store.redb";

type Def = TableDefinition<'static, &'static [u8], &'static [u8]>;
type WriteTable<'tx> = redb::Table<'tx, &'static [u8], &'static [u8]>;

fn err(e: impl Into<redb::Error>) -> KvError {
    KvError::Redb(e.into())
}

#[derive(Clone)]
pub(crate) struct Redb {
    db: Arc<redb::Database>,
}

impl Redb {
    pub(super) fn open(dir: &Path) -> Result<Self, KvError> {
        std::fs::create_dir_all(dir)?;
        let db = redb::Database::builder()
            .create(dir.join(FILE))
            .map_err(err)?;
        Ok(Self { db: Arc::new(db) })
    }

    /// The table `name`, created if missing (a read of a table never
    /// written fails in redb). The creation is durable with the next
    /// durable commit; lost before that, it is made again at the next open.
    pub(super) fn table(&self, name: &'static str) -> Result<RedbTable, KvError> {
        let def = Def::new(name);
        let mut tx = self.db.begin_write().map_err(err)?;
        tx.set_durability(Durability::None).map_err(err)?;
        tx.open_table(def).map_err(err)?;
        tx.commit().map_err(err)?;
        Ok(RedbTable {
            db: self.clone(),
            name,
        })
    }

    /// `rows` in one write transaction (each table opened once), fsynced
    /// before it returns when `durable`.
    pub(super) fn commit(&self, rows: &[Write], durable: bool) -> Result<(), KvError> {
        let mut tx = self.db.begin_write().map_err(err)?;
        tx.set_durability(if durable {
            Durability::Immediate
        } else {
            Durability::None
        })
        .map_err(err)?;
        {
            let mut open: Vec<(&'static str, WriteTable<'_>)> = Vec::new();
            for (name, key, value) in rows {
                let at = match open.iter().position(|(open, _)| open == name) {
                    Some(at) => at,
                    None => {
                        open.push((*name, tx.open_table(Def::new(name)).map_err(err)?));
                        open.len() - 1
                    }
                };
                let table = &mut open[at].1;
                match value {
                    Some(v) => {
                        table.insert(&**key, &**v).map_err(err)?;
                    }
                    None => {
                        table.remove(&**key).map_err(err)?;
                    }
                }
            }
        }
        tx.commit().map_err(err)
    }

    #[cfg(test)]
    pub(super) fn table_names(&self) -> Result<Vec<String>, KvError> {
        use redb::TableHandle as _;
        let tx = self.db.begin_read().map_err(err)?;
        let tables = tx.list_tables().map_err(err)?;
        Ok(tables.map(|t| t.name().to_owned()).collect())
    }

    /// An empty durable commit: redb makes the non-durable commits before
    /// it durable with it.
    pub(super) fn sync(&self) -> Result<(), KvError> {
        let mut tx = self.db.begin_write().map_err(err)?;
        tx.set_durability(Durability::Immediate).map_err(err)?;
        tx.commit().map_err(err)
    }
}

#[derive(Clone)]
pub(crate) struct RedbTable {
    db: Redb,
    name: &'static str,
}

impl RedbTable {
    pub(super) fn name(&self) -> &'static str {
        self.name
    }

    pub(super) fn get(&self, key: &[u8]) -> Result<Option<Slice>, KvError> {
        let tx = self.db.db.begin_read().map_err(err)?;
        let table = tx.open_table(Def::new(self.name)).map_err(err)?;
        let value = table.get(key).map_err(err)?;
        Ok(value.map(|v| Slice::from(v.value())))
    }

    /// One row in a transaction of its own, not synced.
    pub(super) fn insert(&self, key: Slice, value: Slice) -> Result<(), KvError> {
        self.db.commit(&[(self.name, key, Some(value))], false)
    }

    pub(super) fn scan(&self, bounds: (Bound<Vec<u8>>, Bound<Vec<u8>>)) -> Iter {
        let started = (|| {
            let tx = self.db.db.begin_read().map_err(err)?;
            let table = tx.open_table(Def::new(self.name)).map_err(err)?;
            let borrowed = (
                bounds.0.as_ref().map(Vec::as_slice),
                bounds.1.as_ref().map(Vec::as_slice),
            );
            table.range_owned(borrowed).map_err(err)
        })();
        match started {
            Ok(range) => Iter::Redb(RedbIter { range }),
            Err(e) => Iter::Failed(Some(e)),
        }
    }
}

pub(crate) struct RedbIter {
    range: redb::OwnedRange<&'static [u8], &'static [u8]>,
}

type Row = redb::Result<(
    redb::OwnedAccessGuard<&'static [u8]>,
    redb::OwnedAccessGuard<&'static [u8]>,
)>;

fn row(r: Row) -> Result<(Slice, Slice), KvError> {
    let (k, v) = r.map_err(err)?;
    Ok((Slice::from(k.value()), Slice::from(v.value())))
}

impl RedbIter {
    pub(super) fn next(&mut self) -> Option<Result<(Slice, Slice), KvError>> {
        self.range.next().map(row)
    }

    pub(super) fn next_back(&mut self) -> Option<Result<(Slice, Slice), KvError>> {
        self.range.next_back().map(row)
    }
}
