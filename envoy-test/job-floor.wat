;; The job floors, for `make bench`: client-ip's job done with nothing but the
;; host calls it cannot avoid, no SDK, no counters. Per request it reads the
;; peer (`source.address`) and `X-Forwarded-For`, replaces `x-real-ip` with
;; the peer's address and replaces `X-Forwarded-For` with the received value,
;; a comma and the peer (or the peer alone when none was received). It
;; trusts nothing it receives and resolves nothing: whatever a filter doing
;; this job costs on top of that is the price of its own code.
;;
;; The plugin configuration picks how much of the peer it reads:
;;
;;   (empty)   the parsing floor: the port dropped, IPv6 brackets stripped,
;;             as the job needs
;;   bare      the bare floor: the property's bytes written as they are
;;             (`ip:port`), the four host calls and nothing else
;;
;; Anything else fails the configuration.
;;
;; It exports the same callbacks as client-ip's HTTP root, less the ones for
;; ticks and connections.
(module
  (import "env" "proxy_get_property"
    (func $get_property (param i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_get_header_map_value"
    (func $get_header (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_replace_header_map_value"
    (func $replace_header (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_remove_header_map_value"
    (func $remove_header (param i32 i32 i32) (result i32)))
  (import "env" "proxy_get_buffer_bytes"
    (func $get_buffer_bytes (param i32 i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 2)

  ;; 0..7: where the host writes a property's address and size; 8..15: the
  ;; same for a header.
  (data (i32.const 16) "source\00address")
  (data (i32.const 32) "x-real-ip")
  (data (i32.const 48) "x-forwarded-for")
  (data (i32.const 64) "bare")

  ;; Request headers and the plugin configuration, in the proxy-wasm ABI.
  (global $REQUEST_HEADERS i32 (i32.const 0))
  (global $PLUGIN_CONFIGURATION i32 (i32.const 7))
  ;; 1: the bare floor, the peer written as the host reported it.
  (global $bare (mut i32) (i32.const 0))
  ;; Host values are bump-allocated from here, and the heap is emptied when
  ;; each request starts: nothing outlives the callback that read it.
  (global $HEAP_START i32 (i32.const 1024))
  (global $heap (mut i32) (i32.const 1024))
  ;; Room left after each value for the ",<peer>" appended to
  ;; X-Forwarded-For in place (a bracketless IPv6 address is at most 45
  ;; bytes).
  (global $SLACK i32 (i32.const 64))

  (func (export "proxy_abi_version_0_2_1"))

  (func (export "proxy_on_memory_allocate") (param $size i32) (result i32)
    (local $at i32) (local $end i32) (local $short i32)
    (local.set $at (global.get $heap))
    (local.set $end
      (i32.add (i32.add (local.get $at) (local.get $size)) (global.get $SLACK)))
    ;; Overflow of the size: refuse, and the host call fails.
    (if (i32.lt_u (local.get $end) (local.get $at)) (then (return (i32.const 0))))
    (local.set $short
      (i32.sub (local.get $end) (i32.mul (memory.size) (i32.const 65536))))
    (if (i32.gt_u (local.get $end) (i32.mul (memory.size) (i32.const 65536)))
      (then
        (if (i32.eq
              (memory.grow
                (i32.shr_u (i32.add (local.get $short) (i32.const 65535)) (i32.const 16)))
              (i32.const -1))
          (then (return (i32.const 0))))))
    ;; Keep the next value 8-byte aligned.
    (global.set $heap
      (i32.and (i32.add (local.get $end) (i32.const 7)) (i32.const -8)))
    (local.get $at))

  (func (export "proxy_on_vm_start") (param i32 i32) (result i32) (i32.const 1))
  (func (export "proxy_on_configure") (param $root i32) (param $config_size i32) (result i32)
    (local $at i32)
    (global.set $bare (i32.const 0))
    (if (i32.eqz (local.get $config_size)) (then (return (i32.const 1))))
    ;; Only "bare" is known: four bytes.
    (if (i32.ne (local.get $config_size) (i32.const 4)) (then (return (i32.const 0))))
    (global.set $heap (global.get $HEAP_START))
    (if (call $get_buffer_bytes (global.get $PLUGIN_CONFIGURATION)
          (i32.const 0) (local.get $config_size) (i32.const 0) (i32.const 4))
      (then (return (i32.const 0))))
    (local.set $at (i32.load (i32.const 0)))
    (if (i32.ne (i32.load (local.get $at)) (i32.load (i32.const 64)))
      (then (return (i32.const 0))))
    (global.set $bare (i32.const 1))
    (i32.const 1))
  (func (export "proxy_on_context_create") (param i32 i32))

  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
    (local $source i32) (local $source_len i32)
    (local $peer i32) (local $peer_len i32)
    (local $xff i32) (local $xff_len i32)
    (local $i i32)
    (global.set $heap (global.get $HEAP_START))

    ;; The peer, "a.b.c.d:port" or "[v6]:port".
    (if (i32.ne
          (call $get_property (i32.const 16) (i32.const 14) (i32.const 0) (i32.const 4))
          (i32.const 0))
      (then
        ;; No peer, no client: a client header someone else wrote must not
        ;; pass either.
        (drop (call $remove_header (global.get $REQUEST_HEADERS) (i32.const 32) (i32.const 9)))
        (return (i32.const 0))))
    (local.set $source (i32.load (i32.const 0)))
    (local.set $source_len (i32.load (i32.const 4)))
    (local.set $peer (local.get $source))
    (local.set $peer_len (local.get $source_len))
    (block $parsed
      ;; The bare floor parses nothing.
      (br_if $parsed (global.get $bare))
      ;; Drop the port: everything from the last ':'.
      (local.set $i (local.get $source_len))
      (block $no_port
        (loop $scan
          (br_if $no_port (i32.eqz (local.get $i)))
          (local.set $i (i32.sub (local.get $i) (i32.const 1)))
          (br_if $scan
            (i32.ne (i32.load8_u (i32.add (local.get $source) (local.get $i))) (i32.const 58))))
        (local.set $peer_len (local.get $i)))
      ;; Strip the brackets of "[v6]".
      (if (i32.and
            (i32.ge_u (local.get $peer_len) (i32.const 2))
            (i32.and
              (i32.eq (i32.load8_u (local.get $peer)) (i32.const 91))
              (i32.eq
                (i32.load8_u (i32.sub (i32.add (local.get $peer) (local.get $peer_len)) (i32.const 1)))
                (i32.const 93))))
        (then
          (local.set $peer (i32.add (local.get $peer) (i32.const 1)))
          (local.set $peer_len (i32.sub (local.get $peer_len) (i32.const 2))))))
    ;; Longer than the room left after X-Forwarded-For (a bracketless IPv6
    ;; address is at most 45 bytes, with brackets and a port 53).
    (if (i32.gt_u (local.get $peer_len) (i32.const 53))
      (then
        (drop (call $remove_header (global.get $REQUEST_HEADERS) (i32.const 32) (i32.const 9)))
        (return (i32.const 0))))

    ;; The client header: the peer, one instance.
    (drop (call $replace_header (global.get $REQUEST_HEADERS)
      (i32.const 32) (i32.const 9) (local.get $peer) (local.get $peer_len)))

    ;; X-Forwarded-For: the received value, a comma and the peer, written
    ;; in place after the value the host copied in.
    (if (i32.and
          (i32.eqz
            (call $get_header (global.get $REQUEST_HEADERS)
              (i32.const 48) (i32.const 15) (i32.const 8) (i32.const 12)))
          (i32.ne (i32.load (i32.const 12)) (i32.const 0)))
      (then
        (local.set $xff (i32.load (i32.const 8)))
        (local.set $xff_len (i32.load (i32.const 12)))
        (i32.store8 (i32.add (local.get $xff) (local.get $xff_len)) (i32.const 44))
        (local.set $xff_len (i32.add (local.get $xff_len) (i32.const 1)))
        (local.set $i (i32.const 0))
        (block $copied
          (loop $copy
            (br_if $copied (i32.ge_u (local.get $i) (local.get $peer_len)))
            (i32.store8
              (i32.add (i32.add (local.get $xff) (local.get $xff_len)) (local.get $i))
              (i32.load8_u (i32.add (local.get $peer) (local.get $i))))
            (local.set $i (i32.add (local.get $i) (i32.const 1)))
            (br $copy)))
        (drop (call $replace_header (global.get $REQUEST_HEADERS)
          (i32.const 48) (i32.const 15)
          (local.get $xff) (i32.add (local.get $xff_len) (local.get $peer_len)))))
      (else
        (drop (call $replace_header (global.get $REQUEST_HEADERS)
          (i32.const 48) (i32.const 15) (local.get $peer) (local.get $peer_len)))))
    ;; 0: Continue.
    (i32.const 0))

  (func (export "proxy_on_delete") (param i32)))
