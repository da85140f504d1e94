//! The filter's counters. Requests bump plain cells in the VM; the root adds
//! them to Envoy's stats once a second, which keeps host calls off the
//! request path, and records the VM's memory as a gauge. Envoy shows them as
//! `wasmcustom.<name>`.

use std::cell::Cell;

use super::host::{Host, MetricKind, Status};

/// Stat names, in the order [`Tally::take`] returns them.
pub const NAMES: [&str; 10] = [
    "client_ip.requests",
    "client_ip.client_from_trusted",
    "client_ip.forged_header_replaced",
    "client_ip.invalid_xff_entries",
    "client_ip.peer_unknown",
    "client_ip.peer_trusted_by_identity",
    "client_ip.allowed_by_list",
    "client_ip.denied",
    "client_ip.dry_run_denied",
    "client_ip.source_missing",
];

/// Counts not yet handed to Envoy.
#[derive(Default)]
pub struct Tally {
    /// Requests seen.
    pub requests: Cell<u64>,
    /// Clients taken from X-Forwarded-For through trusted proxies or hops.
    pub client_from_trusted: Cell<u64>,
    /// Requests that arrived with a client IP header other than the resolved one.
    pub forged_header_replaced: Cell<u64>,
    /// Invalid X-Forwarded-For entries met while resolving.
    pub invalid_xff_entries: Cell<u64>,
    /// Requests whose true peer could not be known.
    pub peer_unknown: Cell<u64>,
    /// Requests whose peer was trusted by its mTLS identity.
    pub peer_trusted_by_identity: Cell<u64>,
    /// Requests served because `allow_clients` lists their client.
    pub allowed_by_list: Cell<u64>,
    /// Requests denied by the access lists.
    pub denied: Cell<u64>,
    /// Requests the access lists would have denied, in a dry run.
    pub dry_run_denied: Cell<u64>,
    /// Requests from a trusted peer (or under `trusted_hops`) that did not
    /// carry the client source header.
    pub source_missing: Cell<u64>,
}

pub fn bump(cell: &Cell<u64>, by: u64) {
    cell.set(cell.get().wrapping_add(by));
}

impl Tally {
    fn take(&self) -> [u64; NAMES.len()] {
        [
            self.requests.take(),
            self.client_from_trusted.take(),
            self.forged_header_replaced.take(),
            self.invalid_xff_entries.take(),
            self.peer_unknown.take(),
            self.peer_trusted_by_identity.take(),
            self.allowed_by_list.take(),
            self.denied.take(),
            self.dry_run_denied.take(),
            self.source_missing.take(),
        ]
    }
}

/// The VM's linear memory, published with the counters.
const MEMORY_GAUGE: &str = "client_ip.vm_memory_bytes";

/// Envoy's handles for the counters, defined once per root.
pub struct Stats {
    ids: Vec<u32>,
    memory_gauge: u32,
}

impl Stats {
    pub fn define(host: &impl Host) -> Result<Stats, Status> {
        let ids = NAMES
            .iter()
            .map(|name| host.define_metric(MetricKind::Counter, name))
            .collect::<Result<Vec<_>, _>>()?;
        let memory_gauge = host.define_metric(MetricKind::Gauge, MEMORY_GAUGE)?;
        Ok(Stats { ids, memory_gauge })
    }

    /// Adds what the tally holds to Envoy's counters and empties it.
    pub fn flush(&self, host: &impl Host, tally: &Tally) {
        for (id, delta) in self.ids.iter().zip(tally.take()) {
            if delta > 0 {
                if let Err(status) = host.increment_metric(*id, delta) {
                    log::debug!("counter {id} not incremented (host status {status})");
                }
            }
        }
        if let Err(status) = host.record_metric(self.memory_gauge, linear_memory_bytes()) {
            log::debug!("memory gauge not recorded (host status {status})");
        }
    }
}

fn linear_memory_bytes() -> u64 {
    #[cfg(target_arch = "wasm32")]
    {
        const WASM_PAGE: u64 = 64 * 1024;
        (core::arch::wasm32::memory_size(0) as u64).saturating_mul(WASM_PAGE)
    }
    #[cfg(not(target_arch = "wasm32"))]
    {
        0
    }
}
