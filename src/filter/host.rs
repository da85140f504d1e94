//! Every call the filter makes to its host, behind one trait.
//!
//! [`Host`] is what the filter needs from Envoy. [`WasmHost`] makes the
//! proxy-wasm ABI calls (on wasm32); tests put a recording host in its place
//! (`super::mock`), so the whole request flow runs and is counted on the
//! build machine. Calls hand the host's status back instead of panicking on
//! it, since a panic aborts the Wasm VM, and property paths come
//! pre-serialised, so the request path builds no path vectors.

/// A proxy-wasm status code other than OK.
pub type Status = u32;

/// Property paths, serialised as proxy-wasm expects: segments joined by NUL.
pub mod path {
    /// The downstream peer as Envoy reports it (`ip:port`).
    pub const SOURCE_ADDRESS: &[u8] = b"source\0address";
    /// The true TCP peer, recorded by the network filter for the HTTP filter.
    /// Envoy keeps it in filter state as `wasm.client_ip_peer`.
    pub const CLIENT_IP_PEER: &[u8] = b"client_ip_peer";
    /// The resolved client, published as filter state `wasm.client_ip`.
    pub const CLIENT_IP: &[u8] = b"client_ip";
    /// The first URI SAN of the downstream peer's certificate: its SPIFFE
    /// identity on a mesh mTLS hop. Not found without a client certificate.
    pub const PEER_URI_SAN: &[u8] = b"connection\0uri_san_peer_certificate";
    /// The root_id this plugin was configured with.
    pub const PLUGIN_ROOT_ID: &[u8] = b"plugin_root_id";

    /// `request.headers.<name>`: every value of the header, joined by commas.
    pub fn request_header(name: &str) -> Vec<u8> {
        [b"request\0headers\0".as_slice(), name.as_bytes()].concat()
    }
}

/// The kinds of metric proxy-wasm defines.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MetricKind {
    Counter = 0,
    Gauge = 1,
}

/// What the filter asks of Envoy. Getters return `Ok(None)` when the host
/// has no such value.
pub trait Host {
    fn get_property(&self, path: &[u8]) -> Result<Option<Vec<u8>>, Status>;
    fn set_property(&self, path: &[u8], value: &[u8]) -> Result<(), Status>;
    fn get_request_header(&self, name: &str) -> Result<Option<Vec<u8>>, Status>;
    /// Replaces every instance of the header with one value.
    fn set_request_header(&self, name: &str, value: &[u8]) -> Result<(), Status>;
    fn remove_request_header(&self, name: &str) -> Result<(), Status>;
    /// Answers the request from the filter; it goes no further upstream.
    /// `headers` comes from [`serialize_headers`]; `details` shows in Envoy's
    /// `%RESPONSE_CODE_DETAILS%` and must hold no spaces.
    fn send_local_response(
        &self,
        status: u16,
        details: &str,
        body: &[u8],
        headers: &[u8],
    ) -> Result<(), Status>;
    /// The plugin configuration, `size` bytes of it.
    fn plugin_configuration(&self, size: usize) -> Result<Vec<u8>, Status>;
    fn define_metric(&self, kind: MetricKind, name: &str) -> Result<u32, Status>;
    fn increment_metric(&self, id: u32, by: u64) -> Result<(), Status>;
    fn record_metric(&self, id: u32, value: u64) -> Result<(), Status>;
    fn set_tick_period_milliseconds(&self, period: u32) -> Result<(), Status>;
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

/// Envoy, through the proxy-wasm ABI.
#[cfg(target_arch = "wasm32")]
pub struct WasmHost;

#[cfg(target_arch = "wasm32")]
mod abi {
    use std::ptr::null_mut;

    use super::{Host, MetricKind, Status, WasmHost};

    const OK: u32 = 0;
    const NOT_FOUND: u32 = 1;
    const REQUEST_HEADERS: u32 = 0;
    const PLUGIN_CONFIGURATION: u32 = 7;
    /// No gRPC status: Envoy derives one from the HTTP status for gRPC callers.
    const NO_GRPC_STATUS: i32 = -1;

    #[link(wasm_import_module = "env")]
    extern "C" {
        fn proxy_get_property(
            path_data: *const u8,
            path_size: usize,
            value_data: *mut *mut u8,
            value_size: *mut usize,
        ) -> u32;
        fn proxy_set_property(
            path_data: *const u8,
            path_size: usize,
            value_data: *const u8,
            value_size: usize,
        ) -> u32;
        fn proxy_get_header_map_value(
            map_type: u32,
            key_data: *const u8,
            key_size: usize,
            value_data: *mut *mut u8,
            value_size: *mut usize,
        ) -> u32;
        fn proxy_replace_header_map_value(
            map_type: u32,
            key_data: *const u8,
            key_size: usize,
            value_data: *const u8,
            value_size: usize,
        ) -> u32;
        fn proxy_remove_header_map_value(
            map_type: u32,
            key_data: *const u8,
            key_size: usize,
        ) -> u32;
        fn proxy_get_buffer_bytes(
            buffer_type: u32,
            start: usize,
            max_size: usize,
            data: *mut *mut u8,
            size: *mut usize,
        ) -> u32;
        fn proxy_define_metric(
            metric_type: u32,
            name_data: *const u8,
            name_size: usize,
            metric_id: *mut u32,
        ) -> u32;
        fn proxy_increment_metric(metric_id: u32, offset: i64) -> u32;
        fn proxy_record_metric(metric_id: u32, value: u64) -> u32;
        fn proxy_set_tick_period_milliseconds(period: u32) -> u32;
        fn proxy_send_local_response(
            status_code: u32,
            status_code_details_data: *const u8,
            status_code_details_size: usize,
            body_data: *const u8,
            body_size: usize,
            additional_headers_map_data: *const u8,
            additional_headers_size: usize,
            grpc_status: i32,
        ) -> u32;
    }

    fn check(status: u32) -> Result<(), Status> {
        match status {
            OK => Ok(()),
            status => Err(status),
        }
    }

    /// Takes ownership of a buffer the host filled. The host allocates it
    /// through `proxy_on_memory_allocate`, which hands out exactly `size`
    /// bytes from this module's allocator.
    fn take_host_bytes(data: *mut u8, size: usize) -> Vec<u8> {
        if data.is_null() {
            return Vec::new();
        }
        // SAFETY: the host wrote `size` bytes into a buffer of capacity
        // `size` that it obtained from this module's allocator, and hands it
        // over.
        unsafe { Vec::from_raw_parts(data, size, size) }
    }

    /// Calls a getter that returns a host buffer: `Ok(None)` when not found.
    fn get_bytes(
        call: impl FnOnce(*mut *mut u8, *mut usize) -> u32,
    ) -> Result<Option<Vec<u8>>, Status> {
        let mut data: *mut u8 = null_mut();
        let mut size: usize = 0;
        match call(&mut data, &mut size) {
            OK => Ok(Some(take_host_bytes(data, size))),
            NOT_FOUND => Ok(None),
            status => Err(status),
        }
    }

    impl Host for WasmHost {
        fn get_property(&self, path: &[u8]) -> Result<Option<Vec<u8>>, Status> {
            // SAFETY: pointers and lengths come from live slices and out-parameters.
            get_bytes(|data, size| unsafe {
                proxy_get_property(path.as_ptr(), path.len(), data, size)
            })
        }

        fn set_property(&self, path: &[u8], value: &[u8]) -> Result<(), Status> {
            // SAFETY: pointers and lengths come from live slices.
            check(unsafe {
                proxy_set_property(path.as_ptr(), path.len(), value.as_ptr(), value.len())
            })
        }

        fn get_request_header(&self, name: &str) -> Result<Option<Vec<u8>>, Status> {
            // SAFETY: pointers and lengths come from live slices and out-parameters.
            get_bytes(|data, size| unsafe {
                proxy_get_header_map_value(REQUEST_HEADERS, name.as_ptr(), name.len(), data, size)
            })
        }

        fn set_request_header(&self, name: &str, value: &[u8]) -> Result<(), Status> {
            // SAFETY: pointers and lengths come from live slices.
            check(unsafe {
                proxy_replace_header_map_value(
                    REQUEST_HEADERS,
                    name.as_ptr(),
                    name.len(),
                    value.as_ptr(),
                    value.len(),
                )
            })
        }

        fn remove_request_header(&self, name: &str) -> Result<(), Status> {
            // SAFETY: pointers and lengths come from live slices.
            check(unsafe {
                proxy_remove_header_map_value(REQUEST_HEADERS, name.as_ptr(), name.len())
            })
        }

        fn send_local_response(
            &self,
            status: u16,
            details: &str,
            body: &[u8],
            headers: &[u8],
        ) -> Result<(), Status> {
            // SAFETY: pointers and lengths come from live slices.
            check(unsafe {
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
            })
        }

        fn plugin_configuration(&self, size: usize) -> Result<Vec<u8>, Status> {
            if size == 0 {
                return Ok(Vec::new());
            }
            // SAFETY: out-parameters are live locals.
            get_bytes(|data, out_size| unsafe {
                proxy_get_buffer_bytes(PLUGIN_CONFIGURATION, 0, size, data, out_size)
            })
            .map(Option::unwrap_or_default)
        }

        fn define_metric(&self, kind: MetricKind, name: &str) -> Result<u32, Status> {
            let mut id: u32 = 0;
            // SAFETY: pointers and lengths come from a live slice and a local.
            check(unsafe { proxy_define_metric(kind as u32, name.as_ptr(), name.len(), &mut id) })?;
            Ok(id)
        }

        fn increment_metric(&self, id: u32, by: u64) -> Result<(), Status> {
            let by = i64::try_from(by).unwrap_or(i64::MAX);
            // SAFETY: plain values.
            check(unsafe { proxy_increment_metric(id, by) })
        }

        fn record_metric(&self, id: u32, value: u64) -> Result<(), Status> {
            // SAFETY: plain values.
            check(unsafe { proxy_record_metric(id, value) })
        }

        fn set_tick_period_milliseconds(&self, period: u32) -> Result<(), Status> {
            // SAFETY: plain value.
            check(unsafe { proxy_set_tick_period_milliseconds(period) })
        }
    }
}
