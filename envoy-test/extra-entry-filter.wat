;; `empty-filter.wat` with one more callback, for `make bench`'s cost table:
;; it also exports `proxy_on_response_headers`, doing nothing, so Envoy
;; enters the VM once more per stream. Whatever it costs over the empty
;; filter is the price of one VM entry that makes no host call.
(module
  (memory (export "memory") 2)
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "proxy_on_memory_allocate") (param $size i32) (result i32)
    (select (i32.const 65536) (i32.const 0) (i32.le_u (local.get $size) (i32.const 65536))))
  (func (export "proxy_on_vm_start") (param i32 i32) (result i32) (i32.const 1))
  (func (export "proxy_on_configure") (param i32 i32) (result i32) (i32.const 1))
  (func (export "proxy_on_context_create") (param i32 i32))
  ;; 0: Continue.
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32) (i32.const 0))
  (func (export "proxy_on_response_headers") (param i32 i32 i32) (result i32) (i32.const 0))
  (func (export "proxy_on_delete") (param i32)))
