//! Adversarial soak: real Envoy with 4 workers and both roots, many clients
//! (127.0.0.x and ::1) sending random mixes of valid, malformed, oversized and
//! hostile X-Forwarded-For, X-Real-IP and Forwarded values, with trusted
//! proxies configured.
//!
//! Every request must reach the upstream with exactly one X-Real-IP holding a
//! valid IP, equal to the peer whenever the peer is untrusted; Envoy's log
//! must show no panic; memory must stay flat after warm-up.
//!
//! `make test` runs a short soak (SOAK_REQUESTS, default 4000); `make soak`
//! runs a long one.

use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use envoy_test::{envoy_config, scratch_dir, Envoy, Listener, Request, Upstream};

const TRUSTED: [&str; 2] = ["127.0.0.250", "127.0.0.251"];

/// xorshift64*: deterministic, so a failure can be replayed from its seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len() as u64) as usize]
    }
}

fn hostile_value(rng: &mut Rng) -> Vec<u8> {
    let shapes: u64 = 12;
    match rng.below(shapes) {
        0 => format!(
            "{}.{}.{}.{}",
            rng.below(256),
            rng.below(256),
            rng.below(256),
            rng.below(256)
        )
        .into_bytes(),
        1 => format!("[2001:db8::{:x}]:{}", rng.below(65536), rng.below(65536)).into_bytes(),
        2 => b"unknown, _hidden, 203.0.113.7".to_vec(),
        3 => "9.9.9.9,".repeat(1 + rng.below(200) as usize).into_bytes(),
        4 => vec![b'x'; 1 + rng.below(16 * 1024) as usize],
        5 => (0..rng.below(64))
            .map(|_| 0x80 + rng.below(0x7f) as u8)
            .collect(),
        6 => b",,,, ,\t,".to_vec(),
        7 => b"fe80::1%eth0, 01.02.03.04, 1.2.3.4:99999, [::1".to_vec(),
        8 => format!(
            "203.0.113.{}, {}",
            rng.below(256),
            TRUSTED[rng.below(2) as usize]
        )
        .into_bytes(),
        9 => b"for=\"[2001:db8::1]:80\";proto=https, for=6.6.6.6".to_vec(),
        10 => "127.0.0.250, "
            .repeat(1 + rng.below(100) as usize)
            .into_bytes(),
        _ => b"::ffff:6.6.6.6".to_vec(),
    }
}

fn is_ip(text: &str) -> bool {
    text.parse::<IpAddr>().is_ok()
}

#[test]
fn adversarial_soak() {
    let total: usize = std::env::var("SOAK_REQUESTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4000);
    let config = format!(
        r#"{{"trusted_proxies":["{}","{}"],"publish_filter_state":true,"count_forged_headers":true}}"#,
        TRUSTED[0], TRUSTED[1]
    );
    let upstream = Upstream::start();
    let dir = scratch_dir("soak");
    let listeners = [
        Listener::sidecar("v4", &config),
        Listener::sidecar("v6", &config).on("::1"),
    ];
    let envoy = Envoy::try_start_with(envoy_config(&listeners, upstream.port, &dir), dir, 4)
        .unwrap_or_else(|f| panic!("Envoy did not start:\n{}", f.log));
    let (v4, v6) = (envoy.listener("v4"), envoy.listener("v6"));

    let done = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let warm_up = total / 5;
    let mut rss_after_warm_up = 0;
    let threads = 8;
    let per_thread = total / threads;
    std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|thread| {
                let done = Arc::clone(&done);
                scope.spawn(move || {
                    let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ (thread as u64 + 1));
                    for _ in 0..per_thread {
                        let ipv6 = rng.below(10) == 0;
                        let source = if ipv6 {
                            "::1".to_owned()
                        } else if rng.below(4) == 0 {
                            rng.pick(&TRUSTED).to_owned()
                        } else {
                            format!("127.0.0.{}", 2 + rng.below(240))
                        };
                        let mut request = Request::get("/soak").from(&source);
                        for _ in 0..rng.below(3) {
                            request = request.header("x-forwarded-for", hostile_value(&mut rng));
                        }
                        for _ in 0..rng.below(3) {
                            request = request.header("x-real-ip", hostile_value(&mut rng));
                        }
                        if rng.below(3) == 0 {
                            request = request.header("forwarded", hostile_value(&mut rng));
                        }
                        let received = request.send(if ipv6 { v6 } else { v4 }).received();
                        let client = received.one("x-real-ip");
                        assert!(is_ip(client), "x-real-ip {client:?} from {source}");
                        if !TRUSTED.contains(&source.as_str()) {
                            assert_eq!(client, source, "an untrusted peer is its own client");
                        }
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                })
            })
            .collect();
        while done.load(Ordering::Relaxed) < warm_up && !workers.iter().all(|w| w.is_finished()) {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        rss_after_warm_up = envoy.rss_kib();
        for worker in workers {
            worker.join().unwrap();
        }
    });
    let elapsed = started.elapsed();
    let served = done.load(Ordering::Relaxed);
    assert_eq!(served, per_thread * threads);
    let rss_end = envoy.rss_kib();
    let requests = envoy.counter_reaching("wasmcustom.client_ip.requests", served as u64);
    let vm_memory = envoy.stat("wasmcustom.client_ip.vm_memory_bytes");
    println!(
        "soak: {served} requests in {:.1} s ({:.0}/s), 4 workers; Envoy RSS {} KiB after warm-up, {} KiB at the end; \
         Wasm linear memory {} KiB per VM; invalid XFF entries met {}, forged headers replaced {}",
        elapsed.as_secs_f64(),
        served as f64 / elapsed.as_secs_f64(),
        rss_after_warm_up,
        rss_end,
        vm_memory / 1024,
        envoy.stat("wasmcustom.client_ip.invalid_xff_entries"),
        envoy.stat("wasmcustom.client_ip.forged_header_replaced"),
    );
    assert_eq!(requests, served as u64, "the filter saw every request");
    envoy.assert_no_vm_crash();
    // Flat: after warm-up, Envoy grows by no more than 16 MiB however long
    // the soak, and the Wasm heap stays small.
    assert!(
        rss_end <= rss_after_warm_up + 16 * 1024,
        "Envoy RSS grew from {rss_after_warm_up} KiB to {rss_end} KiB"
    );
    assert!(
        vm_memory <= 4 * 1024 * 1024,
        "Wasm linear memory {vm_memory} bytes"
    );
}
