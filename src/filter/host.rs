//! Every call the filter makes to its host, behind one trait.
//!
//! [`Host`] is what the filter needs from Envoy. [`WasmHost`] makes the calls
//! through the proxy-wasm SDK's `hostcalls` (on wasm32), always the byte
//! variants: the SDK's String getters `unwrap()` UTF-8 on header values, so
//! one client byte outside UTF-8 would abort the VM. Tests put a host that
//! behaves like Envoy in its place (`super::mock`), so the whole request flow
//! runs, and is counted, on the build machine.

use std::time::Duration;

pub use proxy_wasm::types::{LogLevel, MetricType, Status};

/// Property paths, as segments.
pub mod path {
    /// The downstream peer as Envoy reports it (`ip:port`).
    pub const SOURCE_ADDRESS: &[&str] = &["source", "address"];
    /// The true TCP peer, recorded by the peer filter for the HTTP filter.
    /// Envoy keeps it in filter state as `wasm.client_ip_peer`.
    pub const PEER_RECORD: &[&str] = &["client_ip_peer"];
    /// The resolved client, published as filter state `wasm.client_ip`.
    pub const CLIENT_IP: &[&str] = &["client_ip"];
    /// The first URI SAN of the downstream peer's certificate: its SPIFFE
    /// identity on a mesh mTLS hop. Not found without a client certificate.
    pub const PEER_URI_SAN: &[&str] = &["connection", "uri_san_peer_certificate"];
    /// An ambient waypoint's record of its HBONE peer, written by istiod's
    /// `connect_terminate` listener: the address as text...
    pub const WAYPOINT_PEER_IP: &[&str] = &[
        "filter_state",
        "envoy.filters.listener.original_dst.remote_ip",
        "ip",
    ];
    /// ...and the port, an int64 (0 when the CONNECT forged the address).
    pub const WAYPOINT_PEER_PORT: &[&str] = &[
        "filter_state",
        "envoy.filters.listener.original_dst.remote_ip",
        "port",
    ];
    /// The HBONE peer's SPIFFE identity, recorded by the same listener.
    pub const WAYPOINT_PEER_PRINCIPAL: &[&str] = &["filter_state", "io.istio.peer_principal"];
    /// The root_id this plugin was configured with.
    pub const PLUGIN_ROOT_ID: &[&str] = &["plugin_root_id"];
}

/// What the filter asks of Envoy. Getters return `Ok(None)` when the host
/// has no such value.
pub trait Host {
    fn get_property(&self, path: &[&str]) -> Result<Option<Vec<u8>>, Status>;
    fn set_property(&self, path: &[&str], value: &[u8]) -> Result<(), Status>;
    /// The first line of a request header.
    fn get_request_header(&self, name: &str) -> Result<Option<Vec<u8>>, Status>;
    /// Replaces every line of the header with one value.
    fn set_request_header(&self, name: &str, value: &[u8]) -> Result<(), Status>;
    fn remove_request_header(&self, name: &str) -> Result<(), Status>;
    /// Answers the request from the filter; it goes no further upstream.
    /// `details` shows in Envoy's `%RESPONSE_CODE_DETAILS%` and must hold no
    /// spaces; `headers` comes from [`serialize_headers`].
    fn send_local_response(
        &self,
        status: u16,
        details: &str,
        body: &[u8],
        headers: &[u8],
    ) -> Result<(), Status>;
    fn plugin_configuration(&self) -> Result<Option<Vec<u8>>, Status>;
    fn define_metric(&self, kind: MetricType, name: &str) -> Result<u32, Status>;
    fn increment_metric(&self, id: u32, by: i64) -> Result<(), Status>;
    fn record_metric(&self, id: u32, value: u64) -> Result<(), Status>;
    fn set_tick_period(&self, period: Duration) -> Result<(), Status>;
    /// The level of Envoy's `wasm` logger.
    fn log_level(&self) -> Result<LogLevel, Status>;
    /// Makes the module's `log` records pass at `level` and above.
    fn follow_log_level(&self, level: LogLevel);
    fn call_foreign_function(
        &self,
        name: &str,
        arguments: &[u8],
    ) -> Result<Option<Vec<u8>>, Status>;
}

/// Headers serialised as proxy-wasm expects a header map: the pair count,
/// each pair's two lengths, then each name and value followed by a NUL.
/// Built once, when the plugin is configured.
pub fn serialize_headers(pairs: &[(&str, &str)]) -> Vec<u8> {
    let len = |n: usize| u32::try_from(n).unwrap_or(u32::MAX).to_le_bytes();
    let mut out = Vec::new();
    out.extend_from_slice(&len(pairs.len()));
    for (name, value) in pairs {
        out.extend_from_slice(&len(name.len()));
        out.extend_from_slice(&len(value.len()));
    }
    for (name, value) in pairs {
        for text in [name, value] {
            out.extend_from_slice(text.as_bytes());
            out.push(0);
        }
    }
    out
}

/// Envoy, through the proxy-wasm SDK.
#[derive(Clone, Copy, Default)]
pub struct WasmHost;

#[cfg(target_arch = "wasm32")]
mod sdk {
    use std::time::Duration;

    use proxy_wasm::hostcalls;
    use proxy_wasm::types::{BufferType, LogLevel, MapType, MetricType, Status};

    use super::{Host, WasmHost};

    /// No gRPC status: Envoy derives one from the HTTP status for gRPC callers.
    const NO_GRPC_STATUS: i32 = -1;

    // The SDK's send_http_response (0.2.5) sends empty response-code details,
    // and a denial must show as `client_ip_denied` in Envoy's access log. The
    // status is read as a plain integer, so no value the host returns can be
    // an invalid enum.
    #[allow(clashing_extern_declarations)]
    #[link(wasm_import_module = "env")]
    extern "C" {
        fn proxy_send_local_response(
            status_code: u32,
            status_code_details_data: *const u8,
            status_code_details_size: usize,
            body_data: *const u8,
            body_size: usize,
            headers_data: *const u8,
            headers_size: usize,
            grpc_status: i32,
        ) -> u32;
    }

    impl Host for WasmHost {
        fn get_property(&self, path: &[&str]) -> Result<Option<Vec<u8>>, Status> {
            hostcalls::get_property(path.to_vec())
        }

        fn set_property(&self, path: &[&str], value: &[u8]) -> Result<(), Status> {
            hostcalls::set_property(path.to_vec(), Some(value))
        }

        fn get_request_header(&self, name: &str) -> Result<Option<Vec<u8>>, Status> {
            hostcalls::get_map_value_bytes(MapType::HttpRequestHeaders, name)
        }

        fn set_request_header(&self, name: &str, value: &[u8]) -> Result<(), Status> {
            hostcalls::set_map_value_bytes(MapType::HttpRequestHeaders, name, Some(value))
        }

        fn remove_request_header(&self, name: &str) -> Result<(), Status> {
            hostcalls::remove_map_value(MapType::HttpRequestHeaders, name)
        }

        fn send_local_response(
            &self,
            status: u16,
            details: &str,
            body: &[u8],
            headers: &[u8],
        ) -> Result<(), Status> {
            // SAFETY: pointers and lengths come from live slices.
            let code = unsafe {
                proxy_send_local_response(
                    u32::from(status),
                    details.as_ptr(),
                    details.len(),
                    body.as_ptr(),
                    body.len(),
                    headers.as_ptr(),
                    headers.len(),
                    NO_GRPC_STATUS,
                )
            };
            match code {
                0 => Ok(()),
                // Any refusal: the caller only needs to know it failed.
                _ => Err(Status::InternalFailure),
            }
        }

        fn plugin_configuration(&self) -> Result<Option<Vec<u8>>, Status> {
            hostcalls::get_buffer(BufferType::PluginConfiguration, 0, usize::MAX)
        }

        fn define_metric(&self, kind: MetricType, name: &str) -> Result<u32, Status> {
            hostcalls::define_metric(kind, name)
        }

        fn increment_metric(&self, id: u32, by: i64) -> Result<(), Status> {
            hostcalls::increment_metric(id, by)
        }

        fn record_metric(&self, id: u32, value: u64) -> Result<(), Status> {
            hostcalls::record_metric(id, value)
        }

        fn set_tick_period(&self, period: Duration) -> Result<(), Status> {
            hostcalls::set_tick_period(period)
        }

        fn log_level(&self) -> Result<LogLevel, Status> {
            hostcalls::get_log_level()
        }

        fn follow_log_level(&self, level: LogLevel) {
            proxy_wasm::set_log_level(level);
        }

        fn call_foreign_function(
            &self,
            name: &str,
            arguments: &[u8],
        ) -> Result<Option<Vec<u8>>, Status> {
            hostcalls::call_foreign_function(name, Some(arguments))
        }
    }
}
