//! The reboot semaphore as CoreOS's locksmith kept it: JSON `{"semaphore":N,"max":M,
//! "holders":[…]}` (fields in that order, holders sorted; `null` until the first unlock),
//! with locksmith's rules and error texts — the count is checked before the holder, so a
//! holder of the only slot is told `semaphore is at 0` (locksmith issue #848, kept).

use serde::{Deserialize, Serialize};

/// A semaphore operation refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// No slot is free.
    #[error("semaphore is at {0}")]
    Full(i64),
    /// The holder holds a slot already.
    #[error("holder exists")]
    HolderExists,
    /// The holder holds no slot.
    #[error("holder does not exist")]
    HolderNotExist,
}

/// The semaphore's value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Semaphore {
    /// Free slots (may go negative after `set-max` lowered the maximum).
    pub semaphore: i64,
    /// Slots in all.
    pub max: i64,
    /// The holders, sorted (`None`: `null`, as a new semaphore is written).
    pub holders: Option<Vec<String>>,
}

impl Default for Semaphore {
    fn default() -> Self {
        Semaphore {
            semaphore: 1,
            max: 1,
            holders: None,
        }
    }
}

impl Semaphore {
    /// The holders (none for `null`).
    pub fn holders(&self) -> &[String] {
        self.holders.as_deref().unwrap_or(&[])
    }

    /// Takes a slot for `id`.
    pub fn lock(&mut self, id: &str) -> Result<(), Refused> {
        if self.semaphore <= 0 {
            return Err(Refused::Full(self.semaphore));
        }
        let holders = self.holders.get_or_insert_with(Vec::new);
        match holders.binary_search_by(|h| h.as_str().cmp(id)) {
            Ok(_) => return Err(Refused::HolderExists),
            Err(at) => holders.insert(at, id.to_string()),
        }
        self.semaphore -= 1;
        Ok(())
    }

    /// Gives `id`'s slot back.
    pub fn unlock(&mut self, id: &str) -> Result<(), Refused> {
        let holders = self.holders.get_or_insert_with(Vec::new);
        match holders.binary_search_by(|h| h.as_str().cmp(id)) {
            Ok(at) => {
                holders.remove(at);
            }
            Err(_) => return Err(Refused::HolderNotExist),
        }
        self.semaphore += 1;
        Ok(())
    }

    /// Sets the number of slots; the free count moves by the same amount. Returns the
    /// old maximum.
    pub fn set_max(&mut self, max: i64) -> i64 {
        let old = self.max;
        let diff = self.max - max;
        self.semaphore -= diff;
        self.max = max;
        old
    }

    /// The JSON written to etcd.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_semaphore_is_written_as_locksmith_wrote_it() {
        assert_eq!(
            Semaphore::default().to_json(),
            r#"{"semaphore":1,"max":1,"holders":null}"#
        );
    }

    #[test]
    fn lock_and_unlock_keep_holders_sorted_and_count() {
        let mut s = Semaphore::default();
        s.set_max(3);
        for id in ["c", "a", "b"] {
            s.lock(id).unwrap();
        }
        assert_eq!(s.holders(), ["a", "b", "c"]);
        assert_eq!(s.lock("d"), Err(Refused::Full(0)));
        s.unlock("b").unwrap();
        assert_eq!(s.unlock("b"), Err(Refused::HolderNotExist));
        assert_eq!(s.lock("a"), Err(Refused::HolderExists));
        s.unlock("a").unwrap();
        s.unlock("c").unwrap();
        assert_eq!(s.to_json(), r#"{"semaphore":3,"max":3,"holders":[]}"#);
    }

    #[test]
    fn the_count_is_checked_before_the_holder() {
        let mut s = Semaphore::default();
        s.lock("a").unwrap();
        assert_eq!(s.lock("a").unwrap_err().to_string(), "semaphore is at 0");
    }

    #[test]
    fn set_max_moves_the_free_count_and_may_go_negative() {
        let mut s = Semaphore::default();
        s.lock("a").unwrap();
        assert_eq!(s.set_max(3), 1);
        assert_eq!((s.semaphore, s.max), (2, 3));
        s.lock("b").unwrap();
        s.lock("c").unwrap();
        assert_eq!(s.set_max(1), 3);
        assert_eq!((s.semaphore, s.max), (-2, 1));
        assert_eq!(s.lock("d"), Err(Refused::Full(-2)));
    }

    #[test]
    fn values_written_by_locksmith_are_read() {
        let s: Semaphore =
            serde_json::from_str(r#"{"semaphore":0,"max":1,"holders":["abc"]}"#).unwrap();
        assert_eq!(s.holders(), ["abc"]);
        assert!(serde_json::from_str::<Semaphore>(r#"{"semaphore":"x"}"#).is_err());
    }
}
