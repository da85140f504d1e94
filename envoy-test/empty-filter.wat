;; The smallest proxy-wasm HTTP filter, for `make bench`. It exports the same
;; per-stream callbacks as client-ip's HTTP root (context create, request
;; headers, delete) and does nothing in them, which measures what Envoy
;; charges for any Wasm HTTP filter. Given a non-empty plugin configuration,
;; it also reads one property (`source.address`) per request, which measures
;; what a single property read costs.
(module
  (import "env" "proxy_get_property"
    (func $get_property (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 2)
  (data (i32.const 16) "source\00address")
  (global $read_property (mut i32) (i32.const 0))
  (func (export "proxy_abi_version_0_2_1"))
  ;; Whatever the host copies in lands in the second page; nothing keeps it.
  (func (export "proxy_on_memory_allocate") (param $size i32) (result i32)
    (select (i32.const 65536) (i32.const 0) (i32.le_u (local.get $size) (i32.const 65536))))
  (func (export "proxy_on_vm_start") (param i32 i32) (result i32) (i32.const 1))
  (func (export "proxy_on_configure") (param $root i32) (param $config_size i32) (result i32)
    (global.set $read_property (i32.ne (local.get $config_size) (i32.const 0)))
    (i32.const 1))
  (func (export "proxy_on_context_create") (param i32 i32))
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
    (if (global.get $read_property)
      (then (drop (call $get_property (i32.const 16) (i32.const 14) (i32.const 32) (i32.const 36)))))
    ;; 0: Continue.
    (i32.const 0))
  (func (export "proxy_on_delete") (param i32)))
