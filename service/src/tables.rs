//! The key-value view a service has of its state: named tables of ordered byte keys.
//!
//! A service sees only [`Tables`]; the host hands it a [`Namespaced`] view of the store, which
//! prefixes every table name with the service's name and refuses tables the service did not
//! declare, so one service cannot read or write another's. Each request runs against an
//! [`Overlay`]: its writes reach the store only if the request was not refused.

use std::collections::BTreeMap;

use fides_types::codec::DecodeError;

/// Key-value pairs, in key order.
pub type Entries = Vec<(Vec<u8>, Vec<u8>)>;

/// A failure of the store under a service. Fatal: the host stops rather than go on with state
/// that may differ from the other replicas'. A request the service refuses is no error.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// The store failed (disk, database).
    #[error("store: {0}")]
    Store(String),
    /// A stored value does not decode.
    #[error("corrupt value in table {table}: {error}")]
    Corrupt {
        /// The table.
        table: String,
        /// Why.
        error: DecodeError,
    },
    /// A service used a table it did not declare (a bug in the service).
    #[error("table {table} is not one of service {service}'s tables")]
    UndeclaredTable {
        /// The service.
        service: String,
        /// The table it asked for.
        table: String,
    },
}

/// Ordered key-value tables, by name.
///
/// Object safe: services take `&mut dyn Tables`, so one service type runs over the in-memory
/// tables of a test and the replica's store alike.
pub trait Tables {
    /// The value under `key` in `table`.
    fn get(&self, table: &str, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError>;
    /// Set `key` to `value` in `table`.
    fn put(&mut self, table: &str, key: &[u8], value: &[u8]) -> Result<(), StoreError>;
    /// Remove `key` from `table` (nothing if absent).
    fn delete(&mut self, table: &str, key: &[u8]) -> Result<(), StoreError>;
    /// The entries of `table` with `from <= key < to`, in key order, at most `max` of them.
    fn range(&self, table: &str, from: &[u8], to: &[u8], max: usize) -> Result<Entries, StoreError>;
}

/// The end of the range of keys that start with `prefix`: scan `prefix..prefix_end(prefix)`.
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    // All 0xff (or empty): every longer key of the prefix sorts below this one.
    vec![0xff; prefix.len() + 1]
}

/// [`Tables`] in memory (tests, the simulator).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MemoryTables {
    tables: BTreeMap<String, BTreeMap<Vec<u8>, Vec<u8>>>,
}

impl MemoryTables {
    /// Every table, by name (for comparing two replicas' states in tests).
    pub fn tables(&self) -> &BTreeMap<String, BTreeMap<Vec<u8>, Vec<u8>>> {
        &self.tables
    }
}

impl Tables for MemoryTables {
    fn get(&self, table: &str, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.tables.get(table).and_then(|t| t.get(key)).cloned())
    }

    fn put(&mut self, table: &str, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        self.tables.entry(table.to_owned()).or_default().insert(key.to_vec(), value.to_vec());
        Ok(())
    }

    fn delete(&mut self, table: &str, key: &[u8]) -> Result<(), StoreError> {
        if let Some(t) = self.tables.get_mut(table) {
            t.remove(key);
            if t.is_empty() {
                // An emptied table equals one never written: states compare equal.
                self.tables.remove(table);
            }
        }
        Ok(())
    }

    fn range(&self, table: &str, from: &[u8], to: &[u8], max: usize) -> Result<Entries, StoreError> {
        if from >= to {
            return Ok(Vec::new());
        }
        Ok(self
            .tables
            .get(table)
            .map(|t| t.range(from.to_vec()..to.to_vec()).take(max).map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default())
    }
}

/// The tables of one service: `name` is its namespace, `tables` the tables it declared.
///
/// Table `t` of service `s` is the store's table `s_t` (the bistro's `events` is `bistro_events`,
/// the name its store used before the host existed).
pub struct Namespaced<'a> {
    store: &'a mut dyn Tables,
    service: &'static str,
    tables: &'static [&'static str],
}

impl<'a> Namespaced<'a> {
    /// The view of `store` that service `service` with tables `tables` has.
    pub fn new(store: &'a mut dyn Tables, service: &'static str, tables: &'static [&'static str]) -> Namespaced<'a> {
        Namespaced { store, service, tables }
    }

    /// The store's name of `table`, if the service declared it.
    fn full(&self, table: &str) -> Result<String, StoreError> {
        full_name(self.service, self.tables, table)
    }
}

/// The store's name of table `table` of `service`, if `tables` declares it.
pub fn full_name(service: &str, tables: &[&str], table: &str) -> Result<String, StoreError> {
    if !tables.contains(&table) {
        return Err(StoreError::UndeclaredTable { service: service.to_owned(), table: table.to_owned() });
    }
    Ok(format!("{service}_{table}"))
}

impl Tables for Namespaced<'_> {
    fn get(&self, table: &str, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.store.get(&self.full(table)?, key)
    }

    fn put(&mut self, table: &str, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        let table = self.full(table)?;
        self.store.put(&table, key, value)
    }

    fn delete(&mut self, table: &str, key: &[u8]) -> Result<(), StoreError> {
        let table = self.full(table)?;
        self.store.delete(&table, key)
    }

    fn range(&self, table: &str, from: &[u8], to: &[u8], max: usize) -> Result<Entries, StoreError> {
        self.store.range(&self.full(table)?, from, to, max)
    }
}

/// A read-only view: writes are a bug (queries must not change state) and fail.
pub struct ReadOnly<'a>(pub &'a dyn Tables);

impl Tables for ReadOnly<'_> {
    fn get(&self, table: &str, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.0.get(table, key)
    }

    fn put(&mut self, table: &str, _: &[u8], _: &[u8]) -> Result<(), StoreError> {
        Err(StoreError::Store(format!("a read-only view cannot write table {table}")))
    }

    fn delete(&mut self, table: &str, _: &[u8]) -> Result<(), StoreError> {
        Err(StoreError::Store(format!("a read-only view cannot write table {table}")))
    }

    fn range(&self, table: &str, from: &[u8], to: &[u8], max: usize) -> Result<Entries, StoreError> {
        self.0.range(table, from, to, max)
    }
}

/// Writes held in memory over a base: reads see them, the base does not until
/// [`Overlay::commit`]. Dropping the overlay drops the writes (a refused request leaves nothing).
pub struct Overlay<'a> {
    base: &'a mut dyn Tables,
    /// (table, key) → the new value, or `None` for a deletion.
    writes: BTreeMap<(String, Vec<u8>), Option<Vec<u8>>>,
}

impl<'a> Overlay<'a> {
    /// No writes yet over `base`.
    pub fn new(base: &'a mut dyn Tables) -> Overlay<'a> {
        Overlay { base, writes: BTreeMap::new() }
    }

    /// Write everything to the base, in key order.
    pub fn commit(self) -> Result<(), StoreError> {
        for ((table, key), value) in self.writes {
            match value {
                Some(value) => self.base.put(&table, &key, &value)?,
                None => self.base.delete(&table, &key)?,
            }
        }
        Ok(())
    }

    fn pending<'s>(
        &'s self,
        table: &'s str,
        from: &'s [u8],
        to: &'s [u8],
    ) -> impl Iterator<Item = (&'s Vec<u8>, &'s Option<Vec<u8>>)> + 's {
        let start = (table.to_owned(), from.to_vec());
        let end = (table.to_owned(), to.to_vec());
        self.writes.range(start..end).map(|((_, key), value)| (key, value))
    }
}

impl Tables for Overlay<'_> {
    fn get(&self, table: &str, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        match self.writes.get(&(table.to_owned(), key.to_vec())) {
            Some(value) => Ok(value.clone()),
            None => self.base.get(table, key),
        }
    }

    fn put(&mut self, table: &str, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        self.writes.insert((table.to_owned(), key.to_vec()), Some(value.to_vec()));
        Ok(())
    }

    fn delete(&mut self, table: &str, key: &[u8]) -> Result<(), StoreError> {
        self.writes.insert((table.to_owned(), key.to_vec()), None);
        Ok(())
    }

    fn range(&self, table: &str, from: &[u8], to: &[u8], max: usize) -> Result<Entries, StoreError> {
        if from >= to {
            return Ok(Vec::new());
        }
        // Each deletion in the range may hide one base entry: ask the base for that many more, so
        // that the first `max` merged entries are all below the last base entry returned.
        let deleted = self.pending(table, from, to).filter(|(_, v)| v.is_none()).count();
        let mut merged: BTreeMap<Vec<u8>, Vec<u8>> =
            self.base.range(table, from, to, max.saturating_add(deleted))?.into_iter().collect();
        for (key, value) in self.pending(table, from, to) {
            match value {
                Some(value) => merged.insert(key.clone(), value.clone()),
                None => merged.remove(key),
            };
        }
        Ok(merged.into_iter().take(max).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filled() -> MemoryTables {
        let mut base = MemoryTables::default();
        for k in 0u8..10 {
            base.put("t", &[k], &[k]).expect("memory");
        }
        base
    }

    #[test]
    fn an_overlay_range_merges_its_writes_and_hides_its_deletions() {
        let mut base = filled();
        let mut overlay = Overlay::new(&mut base);
        for k in 0u8..4 {
            overlay.delete("t", &[k]).expect("memory");
        }
        overlay.put("t", &[20], &[1]).expect("memory");
        overlay.put("t", &[5], &[55]).expect("memory");
        let got = overlay.range("t", &[0], &[255], 3).expect("memory");
        assert_eq!(got, vec![(vec![4], vec![4]), (vec![5], vec![55]), (vec![6], vec![6])]);
        let all = overlay.range("t", &[0], &[255], 100).expect("memory");
        assert_eq!(all.len(), 7);
        assert_eq!(all.last(), Some(&(vec![20], vec![1])));
        assert_eq!(overlay.get("t", &[1]).expect("memory"), None);
    }

    #[test]
    fn an_overlay_changes_its_base_only_when_committed() {
        let mut base = filled();
        let before = base.clone();
        {
            let mut overlay = Overlay::new(&mut base);
            overlay.put("t", &[1], b"x").expect("memory");
            overlay.delete("t", &[2]).expect("memory");
        }
        assert_eq!(base, before, "a dropped overlay writes nothing");
        let mut overlay = Overlay::new(&mut base);
        overlay.put("t", &[1], b"x").expect("memory");
        overlay.delete("t", &[2]).expect("memory");
        overlay.commit().expect("memory");
        assert_eq!(base.get("t", &[1]).expect("memory"), Some(b"x".to_vec()));
        assert_eq!(base.get("t", &[2]).expect("memory"), None);
    }

    #[test]
    fn a_namespaced_view_reaches_only_its_declared_tables() {
        let mut store = MemoryTables::default();
        store.put("other_secret", b"k", b"v").expect("memory");
        let mut view = Namespaced::new(&mut store, "mine", &["data"]);
        view.put("data", b"k", b"v").expect("declared");
        assert!(matches!(view.get("secret", b"k"), Err(StoreError::UndeclaredTable { .. })));
        assert!(matches!(view.put("other_secret", b"k", b"w"), Err(StoreError::UndeclaredTable { .. })));
        assert_eq!(store.get("mine_data", b"k").expect("memory"), Some(b"v".to_vec()));
        assert_eq!(store.get("other_secret", b"k").expect("memory"), Some(b"v".to_vec()));
    }

    #[test]
    fn prefix_end_bounds_every_key_with_the_prefix() {
        assert_eq!(prefix_end(&[1, 2]), vec![1, 3]);
        assert_eq!(prefix_end(&[1, 0xff]), vec![2]);
        assert_eq!(prefix_end(&[0xff]), vec![0xff, 0xff]);
    }
}
