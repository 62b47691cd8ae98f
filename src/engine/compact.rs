//! Compact forms of what the snapshot holds per company and per user. Every replica keeps
//! every company in memory, so a company's state is sized for a million of them: names that
//! repeat across companies (plan ids, event, trait and key names) are one shared allocation,
//! and traits are a sorted boxed slice instead of a map (a 4-trait `BTreeMap` alone is a
//! 600-byte node).

use std::borrow::Cow;
use std::collections::HashSet;
use std::sync::Arc;

use serde::de::{DeserializeSeed, Deserializer, MapAccess, Visitor};
use serde_json::Value;

/// Hands out one shared `Arc<str>` per distinct string while a snapshot is built.
#[derive(Debug, Default)]
pub struct Interner(HashSet<Arc<str>>);

impl Interner {
    pub fn intern(&mut self, s: &str) -> Arc<str> {
        if let Some(shared) = self.0.get(s) {
            return shared.clone();
        }
        let shared: Arc<str> = Arc::from(s);
        self.0.insert(shared.clone());
        shared
    }
}

/// Traits sorted by name; looked up by binary search.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct TraitSet(Box<[(Arc<str>, Value)]>);

impl TraitSet {
    /// The traits of a JSON object's text (a `jsonb` column read as text), parsed straight
    /// into the set: no intermediate map.
    pub fn from_json(json: &str, interner: &mut Interner) -> serde_json::Result<TraitSet> {
        let mut de = serde_json::Deserializer::from_str(json);
        let traits = Seed(interner).deserialize(&mut de)?;
        de.end()?;
        Ok(traits)
    }

    pub fn get(&self, name: &str) -> Option<&Value> {
        self.0
            .binary_search_by(|(n, _)| (**n).cmp(name))
            .ok()
            .map(|i| &self.0[i].1)
    }

    /// Sets one trait (replacing a value of the same name). Tests build contexts with it; a
    /// loaded snapshot's traits are only read.
    #[cfg(test)]
    pub fn insert(&mut self, name: &str, value: Value) {
        let mut pairs = std::mem::take(&mut self.0).into_vec();
        match pairs.binary_search_by(|(n, _)| (**n).cmp(name)) {
            Ok(i) => pairs[i].1 = value,
            Err(i) => pairs.insert(i, (Arc::from(name), value)),
        }
        self.0 = pairs.into_boxed_slice();
    }

    /// In name order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Value)> {
        self.0.iter().map(|(n, v)| (&**n, v))
    }
}

/// Reads a JSON object into a [`TraitSet`], interning the names as it goes.
struct Seed<'a>(&'a mut Interner);

impl<'de> DeserializeSeed<'de> for Seed<'_> {
    type Value = TraitSet;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<TraitSet, D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for Seed<'_> {
    type Value = TraitSet;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON object of traits")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<TraitSet, A::Error> {
        let mut pairs: Vec<(Arc<str>, Value)> = Vec::with_capacity(map.size_hint().unwrap_or(4));
        while let Some(name) = map.next_key::<Cow<'de, str>>()? {
            let value: Value = map.next_value()?;
            pairs.push((self.0.intern(&name), value));
        }
        // A later duplicate name wins, as it does in a map.
        pairs.reverse();
        pairs.sort_by(|a, b| a.0.cmp(&b.0));
        pairs.dedup_by(|later, earlier| later.0 == earlier.0);
        Ok(TraitSet(pairs.into_boxed_slice()))
    }
}

/// Tests build traits from a JSON object.
#[cfg(test)]
impl From<super::Traits> for TraitSet {
    fn from(map: super::Traits) -> TraitSet {
        let mut traits = TraitSet::default();
        for (name, value) in map {
            traits.insert(&name, value);
        }
        traits
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn interned_strings_share_one_allocation() {
        let mut interner = Interner::default();
        let a = interner.intern("plan_pro");
        let b = interner.intern(&String::from("plan_pro"));
        assert!(Arc::ptr_eq(&a, &b));
        assert!(!Arc::ptr_eq(&a, &interner.intern("plan_team")));
    }

    #[test]
    fn traits_are_found_by_name_and_kept_in_order() {
        let map = json!({"seats": 4, "region": "eu", "active": true});
        let Value::Object(map) = map else {
            unreachable!()
        };
        let mut traits = TraitSet::from(map);
        assert_eq!(traits.get("region"), Some(&json!("eu")));
        assert_eq!(traits.get("seats"), Some(&json!(4)));
        assert_eq!(traits.get("missing"), None);
        traits.insert("seats", json!(5));
        traits.insert("beta", json!(false));
        let names: Vec<&str> = traits.iter().map(|(n, _)| n).collect();
        assert_eq!(names, ["active", "beta", "region", "seats"]);
        assert_eq!(traits.get("seats"), Some(&json!(5)));
        assert_eq!(traits.iter().count(), 4);
    }

    #[test]
    fn traits_parse_from_json_text() {
        let mut interner = Interner::default();
        let a = TraitSet::from_json(
            r#"{"seats": 4, "region": "e\u0075", "seats": 5}"#,
            &mut interner,
        )
        .unwrap();
        let b = TraitSet::from_json(r#"{"region": "us"}"#, &mut interner).unwrap();
        assert_eq!(a.get("seats"), Some(&json!(5)));
        assert_eq!(a.get("region"), Some(&json!("eu")));
        assert_eq!(a.iter().count(), 2);
        assert!(Arc::ptr_eq(&a.0[0].0, &b.0[0].0));
        assert!(TraitSet::from_json("[1]", &mut interner).is_err());
        assert!(TraitSet::from_json("{} x", &mut interner).is_err());
    }
}
