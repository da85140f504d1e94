//! The host calls the filter makes, as thin safe functions.
//!
//! The SDK's own wrappers panic on any status they do not expect, and a panic
//! aborts the Wasm VM, so these hand the status back instead. They also take
//! property paths pre-serialised, so the request path builds no path vectors.

use std::ptr::null_mut;

/// A proxy-wasm status code other than OK.
pub type Status = u32;

const OK: u32 = 0;
const NOT_FOUND: u32 = 1;
const REQUEST_HEADERS: u32 = 0;
const PLUGIN_CONFIGURATION: u32 = 7;
const COUNTER: u32 = 0;
const GAUGE: u32 = 1;

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
    fn proxy_remove_header_map_value(map_type: u32, key_data: *const u8, key_size: usize) -> u32;
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

/// Takes ownership of a buffer the host filled. The host allocates it through
/// the SDK's `proxy_on_memory_allocate`, which hands out exactly `size` bytes.
fn take_host_bytes(data: *mut u8, size: usize) -> Vec<u8> {
    if data.is_null() {
        return Vec::new();
    }
    // SAFETY: the host wrote `size` bytes into a buffer of capacity `size`
    // that it obtained from this module's allocator, and hands it over.
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

pub fn get_property(path: &[u8]) -> Result<Option<Vec<u8>>, Status> {
    // SAFETY: pointers and lengths come from live slices and out-parameters.
    get_bytes(|data, size| unsafe { proxy_get_property(path.as_ptr(), path.len(), data, size) })
}

pub fn set_property(path: &[u8], value: &[u8]) -> Result<(), Status> {
    // SAFETY: pointers and lengths come from live slices.
    check(unsafe { proxy_set_property(path.as_ptr(), path.len(), value.as_ptr(), value.len()) })
}

pub fn get_request_header(name: &str) -> Result<Option<Vec<u8>>, Status> {
    // SAFETY: pointers and lengths come from live slices and out-parameters.
    get_bytes(|data, size| unsafe {
        proxy_get_header_map_value(REQUEST_HEADERS, name.as_ptr(), name.len(), data, size)
    })
}

/// Replaces every instance of the header with one value.
pub fn set_request_header(name: &str, value: &[u8]) -> Result<(), Status> {
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

pub fn remove_request_header(name: &str) -> Result<(), Status> {
    // SAFETY: pointers and lengths come from live slices.
    check(unsafe { proxy_remove_header_map_value(REQUEST_HEADERS, name.as_ptr(), name.len()) })
}

pub fn plugin_configuration(size: usize) -> Result<Vec<u8>, Status> {
    if size == 0 {
        return Ok(Vec::new());
    }
    // SAFETY: out-parameters are live locals.
    get_bytes(|data, out_size| unsafe {
        proxy_get_buffer_bytes(PLUGIN_CONFIGURATION, 0, size, data, out_size)
    })
    .map(Option::unwrap_or_default)
}

pub fn define_counter(name: &str) -> Result<u32, Status> {
    define_metric(COUNTER, name)
}

pub fn define_gauge(name: &str) -> Result<u32, Status> {
    define_metric(GAUGE, name)
}

fn define_metric(kind: u32, name: &str) -> Result<u32, Status> {
    let mut id: u32 = 0;
    // SAFETY: pointers and lengths come from a live slice and a local.
    check(unsafe { proxy_define_metric(kind, name.as_ptr(), name.len(), &mut id) })?;
    Ok(id)
}

pub fn record_gauge(id: u32, value: u64) -> Result<(), Status> {
    // SAFETY: plain values.
    check(unsafe { proxy_record_metric(id, value) })
}

pub fn increment_counter(id: u32, by: u64) -> Result<(), Status> {
    let by = i64::try_from(by).unwrap_or(i64::MAX);
    // SAFETY: plain values.
    check(unsafe { proxy_increment_metric(id, by) })
}

pub fn set_tick_period_milliseconds(period: u32) -> Result<(), Status> {
    // SAFETY: plain value.
    check(unsafe { proxy_set_tick_period_milliseconds(period) })
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

/// Answers the request from the filter; it goes no further upstream.
/// `headers` comes from [`serialize_headers`]. `details` shows in Envoy's
/// `%RESPONSE_CODE_DETAILS%` and must hold no spaces.
pub fn send_local_response(
    status: u16,
    details: &str,
    body: &[u8],
    headers: &[u8],
) -> Result<(), Status> {
    // No gRPC status: Envoy derives one from the HTTP status for gRPC callers.
    const NO_GRPC_STATUS: i32 = -1;
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
