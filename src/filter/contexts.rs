//! The contexts Envoy creates in this VM: roots (one per configured plugin
//! that shares the VM) and the HTTP streams under them.
//!
//! Context ids are handed out by Envoy. A root is created with parent 0; an
//! HTTP stream keeps a handle on its root's shared state, so a request finds
//! it with one map lookup. Network connections keep nothing: recording the
//! peer needs no root state.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::rc::Rc;

use super::host::Host;
use super::http::{serve_unconfigured, HttpShared};
use super::peer::record_peer;
use super::root::{PluginRoot, Role};
use super::Action;

/// Context ids are small sequential integers: a multiplicative hash spreads
/// them without SipHash's cost.
#[derive(Default)]
pub struct ContextIdHasher(u64);

impl Hasher for ContextIdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(byte)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }

    fn write_u32(&mut self, id: u32) {
        self.0 = u64::from(id).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

#[derive(Default)]
pub struct Contexts {
    roots: Vec<(u32, PluginRoot)>,
    /// HTTP streams and their root's state (`None` while the root has no
    /// accepted configuration).
    streams: HashMap<u32, Option<Rc<HttpShared>>, BuildHasherDefault<ContextIdHasher>>,
}

impl Contexts {
    fn root(&self, id: u32) -> Option<&PluginRoot> {
        self.roots
            .iter()
            .find(|(root_id, _)| *root_id == id)
            .map(|(_, root)| root)
    }

    fn root_mut(&mut self, id: u32) -> Option<&mut PluginRoot> {
        self.roots
            .iter_mut()
            .find(|(root_id, _)| *root_id == id)
            .map(|(_, root)| root)
    }

    pub fn create(&mut self, host: &impl Host, context_id: u32, parent_id: u32) {
        if parent_id == 0 {
            self.roots.push((context_id, PluginRoot::new(host)));
            return;
        }
        if let Some(root) = self.root(parent_id) {
            if root.role == Role::Http {
                let shared = root.http.clone();
                self.streams.insert(context_id, shared);
            }
        }
    }

    pub fn configure(&mut self, host: &impl Host, root_id: u32, configuration_size: usize) -> bool {
        match self.root_mut(root_id) {
            Some(root) => root.configure(host, configuration_size),
            None => {
                log::error!("configuration for unknown root context {root_id}");
                false
            }
        }
    }

    pub fn tick(&self, host: &impl Host, root_id: u32) {
        if let Some(root) = self.root(root_id) {
            root.flush_stats(host);
        }
    }

    pub fn request_headers(&self, host: &impl Host, context_id: u32) -> Action {
        match self.streams.get(&context_id) {
            Some(Some(shared)) => shared.serve_request(host),
            _ => serve_unconfigured(host),
        }
    }

    pub fn new_connection(&self, host: &impl Host) -> Action {
        record_peer(host)
    }

    pub fn delete(&mut self, context_id: u32) {
        if self.streams.remove(&context_id).is_none() {
            self.roots.retain(|(id, _)| *id != context_id);
        }
    }

    #[cfg(test)]
    pub fn live(&self) -> (usize, usize) {
        (self.roots.len(), self.streams.len())
    }
}
