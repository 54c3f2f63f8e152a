//! What a person with a browser sees: the waiting page at once while a
//! solution wakes, then — by itself — the solution's own page, in Debian's
//! headless Chromium (`wakegate_tests::chromium`).

use std::time::{Duration, Instant};

use tokio::time::timeout;
use wakegate_tests::{Wakegate, chromium, get, testapp_solution};

/// `document.title` and the text of `#app` (or null) in the page as it is now.
const LOOK: &str = "JSON.stringify([document.title, document.getElementById('app') && document.getElementById('app').textContent])";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_page_reaches_the_solution_in_chromium() {
    let config = format!("{}{}", testapp_solution("app", "--startup-delay 3", ""), testapp_solution("app2", "--startup-delay 3", ""));
    let wg = Wakegate::start(&config);

    // A navigation to a cold solution gets the waiting page at once.
    let t = Instant::now();
    let accept = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8";
    let r = timeout(Duration::from_secs(5), get(wg.public, "app.localhost", "/", &[("accept", accept)]))
        .await
        .expect("no answer to a navigation within 5 s")
        .expect("request");
    let took = t.elapsed();
    assert!(took < Duration::from_secs(1), "the waiting page took {took:?}");
    assert_eq!(r.status, 503, "body: {}", r.body);
    assert!(!r.header("retry-after").is_empty(), "no Retry-After: {:?}", r.headers);
    assert!(r.header("content-type").starts_with("text/html"), "content-type {:?}", r.header("content-type"));
    assert!(r.body.contains("Starting") && r.body.contains("app"), "not a waiting page for app:\n{}", r.body);
    assert_eq!(wg.phase("app2").await, "cold", "app2 woke with app");

    // A real browser on the still-cold app2: the waiting page, then the solution.
    let url = format!("http://app2.localhost:{}/", wg.public.port());
    let (browser, mut cdp) = chromium::open(&[], &url).await;

    let started = Instant::now();
    let mut seen: Vec<String> = Vec::new();
    let mut saw_waiting = false;
    let mut awake = false;
    while started.elapsed() < Duration::from_secs(20) {
        // Errors are expected while the page reloads (its context goes away).
        let state = match cdp.eval(LOOK).await {
            Ok(v) => format!("title={:?} app={:?}", v[0].as_str().unwrap_or(""), v[1].as_str()),
            Err(e) => format!("({e:#})"),
        };
        if seen.last() != Some(&state) {
            seen.push(state.clone());
        }
        saw_waiting |= state.starts_with("title=\"Starting");
        if state.ends_with("app=Some(\"app2 is awake\")") {
            awake = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let took = started.elapsed();
    let story = seen.join("\n  ");
    assert!(saw_waiting, "the waiting page was never shown; the page went:\n  {story}\nwakegate log:\n{}", wg.log());
    assert!(
        awake,
        "the page did not become the solution's within 20 s; it went:\n  {story}\nChromium log:\n{}\nwakegate log:\n{}",
        browser.log(),
        wg.log()
    );
    eprintln!("app2 reached in {took:?}; the page went:\n  {story}");
    assert_eq!(wg.phase("app2").await, "ready");
    drop(cdp);
    drop(browser);
}
