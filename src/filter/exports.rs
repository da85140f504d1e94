//! The proxy-wasm ABI callbacks Envoy calls, and the module's allocator and
//! logger. Only these are exported (the build keeps exactly this list): a
//! callback the module does not export is one Envoy never enters.

use std::cell::RefCell;
use std::mem::MaybeUninit;

use super::contexts::Contexts;
use super::host::WasmHost;
use super::Action;

thread_local! {
    // The VM runs one callback at a time, on one thread.
    static CONTEXTS: RefCell<Contexts> = RefCell::new(Contexts::default());
}

/// Runs `call` on the contexts. A callback that re-entered the module while
/// another ran would find them borrowed; it then does nothing but log, as
/// the ABI never does that.
fn with_contexts<T>(otherwise: T, call: impl FnOnce(&mut Contexts) -> T) -> T {
    CONTEXTS.with(|contexts| match contexts.try_borrow_mut() {
        Ok(mut contexts) => call(&mut contexts),
        Err(_) => {
            log::error!("callback re-entered the module");
            otherwise
        }
    })
}

#[cfg(target_os = "wasi")]
extern "C" {
    fn __wasm_call_ctors();
}

#[no_mangle]
pub extern "C" fn _initialize() {
    // SAFETY: the WASI reactor's constructors, run once, before any callback.
    #[cfg(target_os = "wasi")]
    unsafe {
        __wasm_call_ctors();
    }
    logger::install();
}

#[no_mangle]
pub extern "C" fn proxy_abi_version_0_2_1() {}

/// Memory the host fills and hands over (header values, properties): exactly
/// `size` bytes, which `host::take_host_bytes` takes back as a `Vec`.
#[no_mangle]
pub extern "C" fn proxy_on_memory_allocate(size: usize) -> *mut u8 {
    let buffer: Box<[MaybeUninit<u8>]> = vec![MaybeUninit::uninit(); size].into_boxed_slice();
    Box::into_raw(buffer).cast::<u8>()
}

#[no_mangle]
pub extern "C" fn proxy_on_vm_start(_root_context_id: u32, _vm_configuration_size: usize) -> bool {
    true
}

#[no_mangle]
pub extern "C" fn proxy_on_context_create(context_id: u32, parent_context_id: u32) {
    with_contexts((), |contexts| {
        contexts.create(&WasmHost, context_id, parent_context_id)
    });
}

#[no_mangle]
pub extern "C" fn proxy_on_configure(root_context_id: u32, configuration_size: usize) -> bool {
    with_contexts(false, |contexts| {
        contexts.configure(&WasmHost, root_context_id, configuration_size)
    })
}

#[no_mangle]
pub extern "C" fn proxy_on_tick(root_context_id: u32) {
    with_contexts((), |contexts| contexts.tick(&WasmHost, root_context_id));
}

#[no_mangle]
pub extern "C" fn proxy_on_new_connection(_context_id: u32) -> Action {
    with_contexts(Action::Continue, |contexts| {
        contexts.new_connection(&WasmHost)
    })
}

#[no_mangle]
pub extern "C" fn proxy_on_request_headers(
    context_id: u32,
    _num_headers: usize,
    _end_of_stream: bool,
) -> Action {
    with_contexts(Action::Continue, |contexts| {
        contexts.request_headers(&WasmHost, context_id)
    })
}

#[no_mangle]
pub extern "C" fn proxy_on_delete(context_id: u32) {
    with_contexts((), |contexts| contexts.delete(context_id));
}

/// `log` records to Envoy's log, at Envoy's `wasm` logger.
mod logger {
    const INFO: u32 = 2;

    #[link(wasm_import_module = "env")]
    extern "C" {
        fn proxy_log(level: u32, message_data: *const u8, message_size: usize) -> u32;
    }

    struct HostLogger;

    static LOGGER: HostLogger = HostLogger;

    pub fn install() {
        if log::set_logger(&LOGGER).is_ok() {
            log::set_max_level(log::LevelFilter::Info);
        }
    }

    impl log::Log for HostLogger {
        fn enabled(&self, metadata: &log::Metadata) -> bool {
            metadata.level() <= log::max_level()
        }

        fn log(&self, record: &log::Record) {
            if !self.enabled(record.metadata()) {
                return;
            }
            // proxy-wasm levels: trace 0, debug 1, info 2, warn 3, error 4.
            let level = match record.level() {
                log::Level::Trace => 0,
                log::Level::Debug => 1,
                log::Level::Info => INFO,
                log::Level::Warn => 3,
                log::Level::Error => 4,
            };
            let message = record.args().to_string();
            // SAFETY: pointer and length come from a live string.
            unsafe {
                proxy_log(level, message.as_ptr(), message.len());
            }
        }

        fn flush(&self) {}
    }
}
