//! What a backend keeps of catalog entries between calls (model sessions, generator
//! adapters), by name, each with the identity of the row it was loaded from: a call that
//! finds the row changed (a new large object or version: only the extension's functions
//! write them) loads it again. Rights are checked by the caller on every call, before
//! the cache is asked.

use std::cell::RefCell;
use std::collections::HashMap;
use std::mem::ManuallyDrop;
use std::thread::LocalKey;

use ragtune_core::error::Error;

/// A per-backend cache (in a `thread_local!`). Never dropped: the backend's exit ends
/// what it holds (ONNX Runtime sessions must not be torn down during process exit).
pub struct BackendCache<K, T>(ManuallyDrop<RefCell<HashMap<String, (K, T)>>>);

impl<K, T> Default for BackendCache<K, T> {
    fn default() -> Self {
        Self(ManuallyDrop::new(RefCell::new(HashMap::new())))
    }
}

/// An entry taken out of its cache for as long as a call uses it (a streamed generation
/// spans many calls); dropping the lease puts it back, also when an error unwinds past
/// it, so the entry is kept for the next call.
pub struct Lease<K: 'static, T: 'static> {
    cache: &'static LocalKey<BackendCache<K, T>>,
    name: String,
    entry: Option<(K, T)>,
}

impl<K: PartialEq + 'static, T: 'static> Lease<K, T> {
    /// The cached `name` if it was loaded from `identity`, else what `load` makes.
    pub fn take(
        cache: &'static LocalKey<BackendCache<K, T>>,
        name: &str,
        identity: K,
        load: impl FnOnce() -> Result<T, Error>,
    ) -> Result<Self, Error> {
        let entry = match cache.with(|cache| cache.0.borrow_mut().remove(name)) {
            Some(entry) if entry.0 == identity => entry,
            stale => {
                drop(stale);
                (identity, load()?)
            }
        };
        Ok(Self { cache, name: name.to_string(), entry: Some(entry) })
    }

    pub fn get(&mut self) -> &mut T {
        &mut self.entry.as_mut().expect("present until dropped").1
    }
}

impl<K: 'static, T: 'static> Drop for Lease<K, T> {
    fn drop(&mut self) {
        if let Some(entry) = self.entry.take() {
            self.cache.with(|cache| cache.0.borrow_mut().insert(std::mem::take(&mut self.name), entry));
        }
    }
}
