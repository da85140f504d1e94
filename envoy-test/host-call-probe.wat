;; One proxy-wasm host call per request, for `make bench`'s cost table. The
;; module exports the same callbacks as `empty-filter.wat` and, given a plugin
;; configuration naming an operation, makes that one call in
;; `proxy_on_request_headers`; whatever it costs over the empty filter is the
;; price of that call. An unknown name fails the configuration.
;;
;;   header-read          proxy_get_header_map_value: X-Forwarded-For (present,
;;                        so the host copies the value in)
;;   header-replace       proxy_replace_header_map_value: x-real-ip (absent, so
;;                        it is added)
;;   header-remove        proxy_remove_header_map_value: x-real-ip (absent)
;;   property-read        proxy_get_property: source.address
;;   filter-state-write   proxy_set_property: `bench_probe` (Envoy's filter
;;                        state `wasm.bench_probe`), an address as the value
;;   header-pairs         proxy_get_header_map_pairs: every request header
;;   peer-record-read     proxy_get_property: `client_ip_peer`, the filter
;;                        state client-ip's peer filter writes when the
;;                        connection opens (the chain runs that filter too)
;;
;; An empty configuration makes no call, like the empty filter.
(module
  (import "env" "proxy_get_buffer_bytes"
    (func $get_buffer_bytes (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_get_header_map_value"
    (func $get_header (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_replace_header_map_value"
    (func $replace_header (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_remove_header_map_value"
    (func $remove_header (param i32 i32 i32) (result i32)))
  (import "env" "proxy_get_property"
    (func $get_property (param i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_set_property"
    (func $set_property (param i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_get_header_map_pairs"
    (func $get_header_pairs (param i32 i32 i32) (result i32)))
  (memory (export "memory") 2)

  ;; 0..7: where the host writes a returned value's address and size.
  (data (i32.const 16) "source\00address")
  (data (i32.const 32) "x-forwarded-for")
  (data (i32.const 48) "x-real-ip")
  (data (i32.const 64) "bench_probe")
  (data (i32.const 80) "203.0.113.7")
  ;; The operations' names, in the order of $op.
  (data (i32.const 128) "header-read")
  (data (i32.const 144) "header-replace")
  (data (i32.const 160) "header-remove")
  (data (i32.const 176) "property-read")
  (data (i32.const 192) "filter-state-write")
  (data (i32.const 224) "header-pairs")
  (data (i32.const 240) "peer-record-read")
  (data (i32.const 256) "client_ip_peer")

  ;; Request headers and the plugin configuration, in the proxy-wasm ABI.
  (global $REQUEST_HEADERS i32 (i32.const 0))
  (global $PLUGIN_CONFIGURATION i32 (i32.const 7))
  ;; 0: no call; 1 to 7: the operations above, in order.
  (global $op (mut i32) (i32.const 0))

  (func (export "proxy_abi_version_0_2_1"))
  ;; Whatever the host copies in lands in the second page; nothing keeps it.
  (func (export "proxy_on_memory_allocate") (param $size i32) (result i32)
    (select (i32.const 65536) (i32.const 0) (i32.le_u (local.get $size) (i32.const 65536))))
  (func (export "proxy_on_vm_start") (param i32 i32) (result i32) (i32.const 1))

  ;; Whether the configuration (at $at, $len bytes) is the name at $name.
  (func $is (param $at i32) (param $len i32) (param $name i32) (param $name_len i32) (result i32)
    (local $i i32)
    (if (i32.ne (local.get $len) (local.get $name_len)) (then (return (i32.const 0))))
    (block $differ
      (loop $compare
        (if (i32.eq (local.get $i) (local.get $len)) (then (return (i32.const 1))))
        (br_if $differ
          (i32.ne (i32.load8_u (i32.add (local.get $at) (local.get $i)))
                  (i32.load8_u (i32.add (local.get $name) (local.get $i)))))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $compare)))
    (i32.const 0))

  (func (export "proxy_on_configure") (param $root i32) (param $config_size i32) (result i32)
    (local $at i32) (local $len i32)
    (global.set $op (i32.const 0))
    (if (i32.eqz (local.get $config_size)) (then (return (i32.const 1))))
    (if (call $get_buffer_bytes (global.get $PLUGIN_CONFIGURATION)
          (i32.const 0) (local.get $config_size) (i32.const 0) (i32.const 4))
      (then (return (i32.const 0))))
    (local.set $at (i32.load (i32.const 0)))
    (local.set $len (i32.load (i32.const 4)))
    (if (call $is (local.get $at) (local.get $len) (i32.const 128) (i32.const 11))
      (then (global.set $op (i32.const 1)) (return (i32.const 1))))
    (if (call $is (local.get $at) (local.get $len) (i32.const 144) (i32.const 14))
      (then (global.set $op (i32.const 2)) (return (i32.const 1))))
    (if (call $is (local.get $at) (local.get $len) (i32.const 160) (i32.const 13))
      (then (global.set $op (i32.const 3)) (return (i32.const 1))))
    (if (call $is (local.get $at) (local.get $len) (i32.const 176) (i32.const 13))
      (then (global.set $op (i32.const 4)) (return (i32.const 1))))
    (if (call $is (local.get $at) (local.get $len) (i32.const 192) (i32.const 18))
      (then (global.set $op (i32.const 5)) (return (i32.const 1))))
    (if (call $is (local.get $at) (local.get $len) (i32.const 224) (i32.const 12))
      (then (global.set $op (i32.const 6)) (return (i32.const 1))))
    (if (call $is (local.get $at) (local.get $len) (i32.const 240) (i32.const 16))
      (then (global.set $op (i32.const 7)) (return (i32.const 1))))
    ;; Unknown: refuse the configuration.
    (i32.const 0))

  (func (export "proxy_on_context_create") (param i32 i32))

  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
    (block $done
      (block $record
        (block $pairs
          (block $state
            (block $property
              (block $remove
                (block $replace
                  (block $read
                    (br_table $done $read $replace $remove $property $state $pairs $record $done
                      (global.get $op)))
                  (drop (call $get_header (global.get $REQUEST_HEADERS)
                    (i32.const 32) (i32.const 15) (i32.const 0) (i32.const 4)))
                  (br $done))
                (drop (call $replace_header (global.get $REQUEST_HEADERS)
                  (i32.const 48) (i32.const 9) (i32.const 80) (i32.const 11)))
                (br $done))
              (drop (call $remove_header (global.get $REQUEST_HEADERS) (i32.const 48) (i32.const 9)))
              (br $done))
            (drop (call $get_property (i32.const 16) (i32.const 14) (i32.const 0) (i32.const 4)))
            (br $done))
          (drop (call $set_property (i32.const 64) (i32.const 11) (i32.const 80) (i32.const 11)))
          (br $done))
        (drop (call $get_header_pairs (global.get $REQUEST_HEADERS) (i32.const 0) (i32.const 4)))
        (br $done))
      (drop (call $get_property (i32.const 256) (i32.const 14) (i32.const 0) (i32.const 4))))
    ;; 0: Continue.
    (i32.const 0))

  (func (export "proxy_on_delete") (param i32)))
