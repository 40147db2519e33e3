//! An in-memory [`SharedStore`] for unit tests, with a switch that makes it fail like a tier
//! that is down.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;

use super::{SharedObject, SharedStore};
use crate::object::{BoxFuture, ObjectError};

/// Objects by key, and counts of what was asked.
#[derive(Default)]
pub struct MemoryStore {
    /// The stored objects; tests may reach in to damage one.
    pub objects: Mutex<HashMap<String, SharedObject>>,
    /// Every request fails while set.
    pub down: AtomicBool,
    /// GETs asked.
    pub gets: AtomicU64,
}

impl MemoryStore {
    fn up(&self, what: &str, key: &str) -> Result<(), ObjectError> {
        match self.down.load(Ordering::SeqCst) {
            true => Err(ObjectError::Other(format!("{what} {key}: the shared tier is down"))),
            false => Ok(()),
        }
    }
}

impl SharedStore for MemoryStore {
    fn get(&self, key: &str) -> BoxFuture<'_, Result<Option<SharedObject>, ObjectError>> {
        self.gets.fetch_add(1, Ordering::SeqCst);
        let result = self.up("GET", key).map(|()| self.objects.lock().unwrap().get(key).cloned());
        Box::pin(async move { result })
    }

    fn put(&self, key: &str, object: SharedObject) -> BoxFuture<'_, Result<(), ObjectError>> {
        let result = self.up("PUT", key).map(|()| {
            self.objects.lock().unwrap().insert(key.to_string(), object);
        });
        Box::pin(async move { result })
    }
}
