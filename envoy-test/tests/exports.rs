//! The release module exports only the callbacks the filter implements.
//!
//! Envoy enters the VM for every exported `proxy_on_*` callback and skips the
//! ones a module does not export. The SDK exports all of them, so `make build`
//! drops the rest; this test keeps that from regressing unnoticed.

use envoy_test::module_path;

const EXPECTED_EXPORTS: &[&str] = &[
    "_initialize",
    "memory",
    "proxy_abi_version_0_2_1",
    "proxy_on_configure",
    "proxy_on_context_create",
    "proxy_on_delete",
    "proxy_on_memory_allocate",
    "proxy_on_new_connection",
    "proxy_on_request_headers",
    "proxy_on_tick",
    "proxy_on_vm_start",
];

#[test]
fn module_exports_only_the_callbacks_it_implements() {
    let module = std::fs::read(module_path()).expect("read the module");
    let mut exports = export_names(&module);
    exports.sort();
    assert_eq!(exports, EXPECTED_EXPORTS);
}

/// The names in a Wasm binary's export section (section id 7).
fn export_names(module: &[u8]) -> Vec<String> {
    assert_eq!(
        module.get(..8),
        Some(&b"\0asm\x01\0\0\0"[..]),
        "not a Wasm 1 module"
    );
    let mut reader = Reader {
        bytes: module,
        at: 8,
    };
    while reader.at < module.len() {
        let id = reader.byte();
        let size = reader.leb() as usize;
        let end = reader.at + size;
        if id == 7 {
            let count = reader.leb();
            let names = (0..count)
                .map(|_| {
                    let len = reader.leb() as usize;
                    let name = String::from_utf8(reader.take(len).to_vec()).expect("UTF-8 name");
                    reader.byte(); // kind
                    reader.leb(); // index
                    name
                })
                .collect();
            assert_eq!(reader.at, end, "export section length");
            return names;
        }
        reader.at = end;
    }
    panic!("the module has no export section");
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn byte(&mut self) -> u8 {
        let byte = self.bytes[self.at];
        self.at += 1;
        byte
    }

    fn take(&mut self, len: usize) -> &[u8] {
        let slice = &self.bytes[self.at..self.at + len];
        self.at += len;
        slice
    }

    fn leb(&mut self) -> u64 {
        let (mut value, mut shift) = (0u64, 0);
        loop {
            let byte = self.byte();
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return value;
            }
            shift += 7;
        }
    }
}
