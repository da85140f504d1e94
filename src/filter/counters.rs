//! The filter's counters. Requests bump plain cells in the VM; the root adds
//! them to Envoy's stats once a second, which keeps host calls off the
//! request path, and records the VM's memory as a gauge. Envoy shows them as
//! `wasmcustom.<name>`.

use std::cell::Cell;

use super::host::{Host, MetricType, Status};

/// Counts not yet handed to Envoy, one cell per counter.
#[derive(Default)]
pub struct Tally {
    cells: [Cell<u64>; COUNTERS.len()],
}

/// Every counter: its stat name and what it counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(usize)]
pub enum Counter {
    /// Requests seen.
    Requests,
    /// Clients taken from the client source through trusted proxies or hops.
    ClientFromTrusted,
    /// Requests that arrived with a client IP header other than the resolved
    /// one (under `count_forged_headers`).
    ForgedHeaderReplaced,
    /// Invalid entries of the client source met while resolving.
    InvalidXffEntries,
    /// Requests whose true peer could not be known.
    PeerUnknown,
    /// Requests whose waypoint peer was forged on the HBONE CONNECT (port 0).
    PeerForgedOnConnect,
    /// Requests whose peer was trusted by its mTLS identity.
    PeerTrustedByIdentity,
    /// Requests served because `allow_clients` lists their client.
    AllowedByList,
    /// Requests denied by the access lists.
    Denied,
    /// Requests the access lists would have denied, in a dry run.
    DryRunDenied,
    /// Requests from a trusted peer (or under `trusted_hops`) that did not
    /// carry the client source header.
    SourceMissing,
    /// Requests answered with an error because a write the trust guarantee
    /// depends on failed.
    WriteFailed,
    /// Requests whose client was unknown, so `envoy.network.ip` was not
    /// published (under `publish_ip_filter_state`).
    IpFilterStateUnpublished,
}

/// Stat names, in [`Counter`] order.
pub const COUNTERS: [&str; 13] = [
    "client_ip.requests",
    "client_ip.client_from_trusted",
    "client_ip.forged_header_replaced",
    "client_ip.invalid_xff_entries",
    "client_ip.peer_unknown",
    "client_ip.peer_forged_on_connect",
    "client_ip.peer_trusted_by_identity",
    "client_ip.allowed_by_list",
    "client_ip.denied",
    "client_ip.dry_run_denied",
    "client_ip.source_missing",
    "client_ip.write_failed",
    "client_ip.ip_filter_state_unpublished",
];

impl Tally {
    pub fn bump(&self, counter: Counter, by: u64) {
        if let Some(cell) = self.cells.get(counter as usize) {
            cell.set(cell.get().wrapping_add(by));
        }
    }

    #[cfg(test)]
    pub fn get(&self, counter: Counter) -> u64 {
        self.cells.get(counter as usize).map_or(0, Cell::get)
    }
}

/// The VM's linear memory, published with the counters.
pub const MEMORY_GAUGE: &str = "client_ip.vm_memory_bytes";

/// Envoy's handles for the counters, defined once per root.
pub struct Stats {
    ids: Vec<u32>,
    memory_gauge: u32,
}

impl Stats {
    pub fn define(host: &impl Host) -> Result<Stats, Status> {
        let ids = COUNTERS
            .iter()
            .map(|name| host.define_metric(MetricType::Counter, name))
            .collect::<Result<Vec<_>, _>>()?;
        let memory_gauge = host.define_metric(MetricType::Gauge, MEMORY_GAUGE)?;
        Ok(Stats { ids, memory_gauge })
    }

    /// Adds what the tally holds to Envoy's counters and empties it.
    pub fn flush(&self, host: &impl Host, tally: &Tally) {
        for (id, cell) in self.ids.iter().zip(&tally.cells) {
            let delta = cell.take();
            if delta > 0 {
                let by = i64::try_from(delta).unwrap_or(i64::MAX);
                if let Err(status) = host.increment_metric(*id, by) {
                    log::debug!("counter {id} not incremented (host status {status:?})");
                }
            }
        }
        if let Err(status) = host.record_metric(self.memory_gauge, linear_memory_bytes()) {
            log::debug!("memory gauge not recorded (host status {status:?})");
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
