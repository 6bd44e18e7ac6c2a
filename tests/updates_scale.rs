//! Benchmark, not part of the suite (`#[ignore]`d): 200 distinct images in the
//! local registry, one container each, one update round from cold. Prints the
//! round's duration and counts dockside's requests in the registry's access log.
//!
//! scripts/test-env.sh && cargo test --release --test updates_scale -- --ignored --nocapture

mod common;

use std::time::{Duration, Instant};

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: cargo test --release --test updates_scale -- --ignored --nocapture"]
async fn one_round_over_200_distinct_images() {
    let n: usize = std::env::var("SCALE_IMAGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let ct = Containers::new(&unique("dsi"));
    let reg = Registry::start();
    let h = reg.host();
    let base_img = format!("{h}/seed:1");
    build_image(&base_img);
    println!("pushing {n} images…");
    let tags: Vec<String> = (0..n).map(|i| format!("{h}/img{i}:1")).collect();
    std::thread::scope(|s| {
        for chunk in tags.chunks(n.div_ceil(6)) {
            let base_img = base_img.clone();
            s.spawn(move || {
                for t in chunk {
                    docker(&["tag", &base_img, t]);
                    docker(&["push", t]);
                }
            });
        }
    });
    println!("creating {n} containers…");
    for (i, t) in tags.iter().enumerate() {
        docker(&["create", "--name", &ct.name(&i.to_string()), t]);
    }
    let broker = Broker::start();
    let base = unique("t");
    let dir = tempfile::tempdir().expect("tmp");
    let c = Collector::start(broker.port, &format!("{base}/+/+/update")).await;
    let started = Instant::now();
    let d = Dockside::start(
        dir.path(),
        &base_config(&broker, &base, &dir.path().join("state"), &ct.prefix),
    );
    c.wait_until(
        &format!("{n} up_to_date"),
        Duration::from_secs(120),
        |all| {
            all.iter()
                .filter(|m| m.json()["status"] == "up_to_date")
                .count()
                >= n
        },
    )
    .await;
    let total = started.elapsed();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (heads, gets) = reg.manifest_requests();
    let log = d.log_text();
    let round_ms = log
        .lines()
        .filter(|l| l.contains("update round done"))
        .filter_map(|l| {
            l.split("elapsed_ms=")
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse::<u64>()
                .ok()
        })
        .max()
        .unwrap_or(0);
    println!(
        "\nupdate watcher: {n} distinct images, one round from cold: {round_ms} ms (all {n} statuses published {:.2} s after start, including the initial sync and the 2 s inventory debounce); registry saw {heads} manifest HEADs and {gets} manifest GETs",
        total.as_secs_f64()
    );
    assert_eq!((heads, gets), (n, 0));
}
